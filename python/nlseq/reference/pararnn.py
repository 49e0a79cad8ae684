"""PyTorch reference of the built-in ParaRNN cells (docs/spec.md §1.1–1.3): the definition of correct.

Layouts (the launcher contract of ``nlseq.ops.pararnn``; S = 1 for the GRU, 2 for the LSTM):
    U [B, T, 3, N]   projected pre-activations Wx + b, gate order (z, r, c) / (f, o, c̃)
    A [3, N]         recurrent weights, same gate order
    P [2, N]         LSTM peepholes (p_f, p_o); None for the GRU
    s0 [B, S, N]     initial state (GRU: h; LSTM: c, h), None for zeros
    S_all [B, T, S, N]  every state; the output y_t is S_all[:, t, -1]

- ``cell_step`` / ``cell_step_jac``: one step for all (b, t) at once; the Jacobian is analytic
  (docs/spec.md §1.3), per channel an S×S block, in the layout of ``nlseq.linear_recurrence``.
- ``pararnn_sequential``: the sequential loop; in float64 it is the test oracle.
- ``pararnn_fwd_reference`` / ``pararnn_bwd_reference``: the reference launchers (Newton with the
  reference scan; backward = the reverse recurrence of docs/spec.md §1.2 and autograd VJPs of
  ``cell_step``), computed in the accumulation dtype (float32; float64 for float64).
- ``input_projection``: U = Wx + b with the block-diagonal W [heads, I/heads, 3, N/heads], written
  in place (``_HeadsProjection``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .scan import acc_dtype, linear_recurrence_scan

STATE_SIZE = {"gru": 1, "lstm": 2}


class _HeadsProjection(torch.autograd.Function):
    """U = Wx + b for heads > 1, written in place: G batched GEMMs over the heads (gate g of every
    head in one ``baddbmm``), each into its strided view U[:, g] of the preallocated [M, G, heads,
    N/heads] output, the layout the recurrence reads. Nothing is copied or stacked afterwards; the
    strides (row stride G·N, unit column stride) are ones BLAS and cuBLAS take as they are.
    The GEMMs run in the inputs' dtype with PyTorch's own settings: TF32 for float32 only when
    torch.backends.cuda.matmul.allow_tf32 is set, bf16/fp16 only for bf16/fp16 inputs."""

    @staticmethod
    def forward(ctx, x2: Tensor, W: Tensor, b: Tensor) -> Tensor:
        heads, ih, G, nh = W.shape
        M = x2.shape[0]
        U = x2.new_empty(M, G, heads, nh)
        xh = x2.view(M, heads, ih).transpose(0, 1)  # [heads, M, ih], a view
        bh = b.view(G, heads, 1, nh)
        for g in range(G):
            torch.baddbmm(bh[g], xh, W[:, :, g, :], out=U[:, g].transpose(0, 1))  # [heads, M, nh] views
        ctx.save_for_backward(x2, W)
        return U

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dU: Tensor):
        x2, W = ctx.saved_tensors
        heads, ih, G, nh = W.shape
        M = x2.shape[0]
        # one GEMM per head for dx and dW, as an addmm per head would: dU in [heads, M, G·nh]
        dUh = dU.permute(2, 0, 1, 3).reshape(heads, M, G * nh)
        dx = dW = db = None
        if ctx.needs_input_grad[0]:
            dx = x2.new_empty(M, heads * ih)
            torch.bmm(dUh, W.reshape(heads, ih, G * nh).transpose(1, 2), out=dx.view(M, heads, ih).transpose(0, 1))
        if ctx.needs_input_grad[1]:
            dW = torch.bmm(x2.view(M, heads, ih).permute(1, 2, 0), dUh).view(heads, ih, G, nh)
        if ctx.needs_input_grad[2]:
            db = dU.sum(0).reshape(G, heads * nh)
        return dx, dW, db


def check_projection(x: Tensor, W: Tensor, b: Tensor) -> tuple[int, int, int, int]:
    """The shapes of U = Wx + b agree (x [..., I], W [heads, I/heads, G, N/heads], b [G, N]);
    returns W's (heads, I/heads, G, N/heads). Shared by every implementation of the projection."""
    heads, ih, G, nh = W.shape
    if x.shape[-1] != heads * ih:
        raise ValueError(
            f"input_projection: x's last dim must be heads * I/heads = {heads * ih} "
            f"(W has shape {tuple(W.shape)}), got {x.shape[-1]}"
        )
    if tuple(b.shape) != (G, heads * nh):
        raise ValueError(f"input_projection: b must have shape [G, N] = {(G, heads * nh)}, got {tuple(b.shape)}")
    return heads, ih, G, nh


def input_projection(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """U [B, T, G, N] = Wx + b for x [B, T, I], W [heads, I/heads, G, N/heads], b [G, N].

    Gate g, channel (head h, index j) = Σ_i x[.., h, i] W[h, i, g, j] + b[g, h N/heads + j]
    (docs/spec.md §1.3). One head: one ``addmm`` straight into U. Several heads: ``_HeadsProjection``,
    G batched GEMMs written in place into the [.., G, heads, N/heads] layout (no ``stack`` copy of
    U). Under torch.compile the plain-op form (an ``addmm`` per head and one ``stack``) is traced
    instead: the compiler sees ordinary ops and fuses the copy itself.
    """
    heads, ih, G, nh = check_projection(x, W, b)
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), heads * ih)
    if heads == 1:
        U = torch.addmm(b.reshape(G * nh), x2, W[0].reshape(ih, G * nh))
    elif torch.compiler.is_compiling():
        U = torch.stack(
            [
                torch.addmm(
                    b[:, h * nh : (h + 1) * nh].reshape(G * nh), x2[:, h * ih : (h + 1) * ih], W[h].reshape(ih, G * nh)
                ).view(-1, G, nh)
                for h in range(heads)
            ],
            dim=2,
        )  # [B·T, G, heads, nh]
    else:
        U = _HeadsProjection.apply(x2, W, b)  # [B·T, G, heads, nh]
    return U.reshape(*lead, G, heads * nh)


def cell_step(cell: str, U: Tensor, A: Tensor, P: Optional[Tensor], s_prev: Tensor) -> Tensor:
    """s = f(s_prev, x) elementwise: U [..., 3, N], s_prev [..., S, N] -> s [..., S, N]."""
    if cell == "gru":
        h = s_prev[..., 0, :]
        z = torch.sigmoid(A[0] * h + U[..., 0, :])
        r = torch.sigmoid(A[1] * h + U[..., 1, :])
        c = torch.tanh(A[2] * (h * r) + U[..., 2, :])
        return (z * c + (1 - z) * h).unsqueeze(-2)
    if cell == "lstm":
        c_prev, h_prev = s_prev[..., 0, :], s_prev[..., 1, :]
        f = torch.sigmoid(A[0] * h_prev + P[0] * c_prev + U[..., 0, :])
        c_tilde = torch.tanh(A[2] * h_prev + U[..., 2, :])
        c = f * c_prev + (1 - f) * c_tilde
        o = torch.sigmoid(A[1] * h_prev + P[1] * c + U[..., 1, :])
        return torch.stack([c, o * torch.tanh(c)], dim=-2)
    raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")


def cell_step_jac(cell: str, U: Tensor, A: Tensor, P: Optional[Tensor], s_prev: Tensor) -> tuple[Tensor, Tensor]:
    """(s, J): s [..., S, N] as ``cell_step``, J = ∂s/∂s_prev per channel, [..., N, S, S].

    The analytic Jacobians of docs/spec.md §1.3 (the same formulas as csrc/include/nlseq/pararnn.h).
    """
    if cell == "gru":
        h = s_prev[..., 0, :]
        z = torch.sigmoid(A[0] * h + U[..., 0, :])
        r = torch.sigmoid(A[1] * h + U[..., 1, :])
        c = torch.tanh(A[2] * (h * r) + U[..., 2, :])
        s = z * c + (1 - z) * h
        J = (1 - z) + (c - h) * z * (1 - z) * A[0] + z * (1 - c * c) * A[2] * (r + h * r * (1 - r) * A[1])
        return s.unsqueeze(-2), J[..., None, None]
    if cell == "lstm":
        cp, hp = s_prev[..., 0, :], s_prev[..., 1, :]
        f = torch.sigmoid(A[0] * hp + P[0] * cp + U[..., 0, :])
        ct = torch.tanh(A[2] * hp + U[..., 2, :])
        c = f * cp + (1 - f) * ct
        o = torch.sigmoid(A[1] * hp + P[1] * c + U[..., 1, :])
        tc = torch.tanh(c)
        df, do = f * (1 - f), o * (1 - o)
        dc_dcp = f + (cp - ct) * df * P[0]
        dc_dhp = (cp - ct) * df * A[0] + (1 - f) * (1 - ct * ct) * A[2]
        kappa = o * (1 - tc * tc) + tc * do * P[1]
        J = torch.stack(
            [torch.stack([dc_dcp, dc_dhp], -1), torch.stack([kappa * dc_dcp, tc * do * A[1] + kappa * dc_dhp], -1)], -2
        )  # [..., N, 2, 2]
        return torch.stack([c, o * tc], dim=-2), J
    raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")


def cell_vjp(cell: str, U: Tensor, A: Tensor, P: Optional[Tensor], s_prev: Tensor, lam: Tensor):
    """λᵀ ∂s/∂(U, A, P, s_prev) for λ = ∂L/∂s [..., S, N]: returns (dU [..., 3, N], dA [3, N],
    dP [2, N] or None, ds_prev [..., S, N]), dA and dP summed over the leading dims.

    Written out by hand (the same formulas as csrc/include/nlseq/pararnn.h) because it runs inside
    a registered op, below autograd.
    """
    lead = tuple(range(U.dim() - 2))
    if cell == "gru":
        h, l = s_prev[..., 0, :], lam[..., 0, :]
        z = torch.sigmoid(A[0] * h + U[..., 0, :])
        r = torch.sigmoid(A[1] * h + U[..., 1, :])
        c = torch.tanh(A[2] * (h * r) + U[..., 2, :])
        dz = l * (c - h) * z * (1 - z)
        dc = l * z * (1 - c * c)
        dr = dc * A[2] * h * r * (1 - r)
        dU = torch.stack([dz, dr, dc], dim=-2)
        dA = torch.stack([(dz * h).sum(lead), (dr * h).sum(lead), (dc * h * r).sum(lead)])
        dprev = l * (1 - z) + dz * A[0] + dr * A[1] + dc * A[2] * r
        return dU, dA, None, dprev.unsqueeze(-2)
    cp, hp = s_prev[..., 0, :], s_prev[..., 1, :]
    f = torch.sigmoid(A[0] * hp + P[0] * cp + U[..., 0, :])
    ct = torch.tanh(A[2] * hp + U[..., 2, :])
    c = f * cp + (1 - f) * ct
    o = torch.sigmoid(A[1] * hp + P[1] * c + U[..., 1, :])
    tc = torch.tanh(c)
    d_o = lam[..., 1, :] * tc * o * (1 - o)
    d_c = lam[..., 0, :] + lam[..., 1, :] * o * (1 - tc * tc) + d_o * P[1]
    d_f = d_c * (cp - ct) * f * (1 - f)
    d_ct = d_c * (1 - f) * (1 - ct * ct)
    dU = torch.stack([d_f, d_o, d_ct], dim=-2)
    dA = torch.stack([(d_f * hp).sum(lead), (d_o * hp).sum(lead), (d_ct * hp).sum(lead)])
    dP = torch.stack([(d_f * cp).sum(lead), (d_o * c).sum(lead)])
    dprev = torch.stack([d_c * f + d_f * P[0], d_f * A[0] + d_o * A[1] + d_ct * A[2]], dim=-2)
    return dU, dA, dP, dprev


def _initial(s0: Optional[Tensor], B: int, S: int, N: int, like: Tensor) -> Tensor:
    return like.new_zeros(B, S, N) if s0 is None else s0.to(like.dtype)


def pararnn_sequential(cell: str, U: Tensor, A: Tensor, P: Optional[Tensor], s0: Optional[Tensor]) -> Tensor:
    """The sequential loop s_t = f(s_{t−1}, x_t), computed in the dtype of U. Returns S_all.

    Differentiable by autograd (it is the oracle for gradients too, in float64).
    """
    B, T, _, N = U.shape
    s = _initial(s0, B, STATE_SIZE[cell], N, U)
    out = []
    for t in range(T):
        s = cell_step(cell, U[:, t], A, P, s)
        out.append(s)
    if not out:
        return U.new_zeros(B, 0, STATE_SIZE[cell], N)
    return torch.stack(out, dim=1)


def _shift(S_all: Tensor, first: Tensor) -> Tensor:
    """States before each step: [first, S_1, .., S_{T−1}] for S_all [B, T, S, N], first [B, S, N]."""
    return torch.cat([first.unsqueeze(1), S_all[:, :-1]], dim=1)


def _to_scan(x: Tensor) -> Tensor:  # [B, T, S, N] -> [B, T, N, S]
    return x.transpose(-1, -2)


def _in_acc(cell: str, U: Tensor, A: Tensor, P: Optional[Tensor], s0: Optional[Tensor]):
    """(U, A, P, first state [B, S, N]) in the accumulation dtype of U (float32 for 16-bit U)."""
    acc = acc_dtype(U.dtype)
    U, A = U.to(acc), A.to(acc)
    P = None if P is None else P.to(acc)
    B, _, _, N = U.shape
    return U, A, P, _initial(s0, B, STATE_SIZE[cell], N, U)


def pararnn_fwd_reference(
    cell: str, U: Tensor, A: Tensor, P: Optional[Tensor], s0: Optional[Tensor], max_iters: int, tol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Newton forward (docs/spec.md §1.1) with the reference scan. Returns (S_all, iters, residual).

    Initial guess f(0, x_t) (s0 at t = 1); every iteration evaluates f and J at the current
    iterate, measures the residual max_t |s_t − f(s_{t−1}, x_t)| and stops when it is <= tol,
    otherwise solves s_t = J_t s_{t−1} + (f_t − J_t s^k_{t−1}) for the next iterate (plain Newton).
    """
    out_dtype = U.dtype
    U, A, P, first = _in_acc(cell, U, A, P, s0)
    acc = U.dtype
    B, T, S, N = U.shape[0], U.shape[1], first.shape[1], U.shape[3]
    prev = torch.zeros(B, T, S, N, dtype=acc, device=U.device)
    prev[:, 0] = first
    H = cell_step(cell, U, A, P, prev)  # initial guess
    iters = 0
    while True:
        prev = _shift(H, first)
        f, J = cell_step_jac(cell, U, A, P, prev)
        residual = (H - f).abs().max() if H.numel() else H.new_zeros(())
        # a NaN/inf residual stops at once: no further iteration makes it finite (docs/numerics.md)
        if bool(residual <= tol) or iters >= max_iters or not bool(torch.isfinite(residual)):
            break
        rhs = f - (J @ _to_scan(prev).unsqueeze(-1)).squeeze(-1).transpose(-1, -2)
        H_scan, _ = linear_recurrence_scan(J, _to_scan(rhs).contiguous(), first.transpose(-1, -2))
        H = _to_scan(H_scan)
        iters += 1
    return (
        H.to(out_dtype).contiguous(),
        torch.tensor(iters, dtype=torch.int64, device=U.device),
        residual.to(acc).reshape(()),
    )


def pararnn_seq_fwd_reference(cell: str, U: Tensor, A: Tensor, P: Optional[Tensor], s0: Optional[Tensor]) -> Tensor:
    """Sequential forward in the accumulation dtype, rounded once to the dtype of U."""
    acc = acc_dtype(U.dtype)
    with torch.no_grad():
        S_all = pararnn_sequential(
            cell, U.to(acc), A.to(acc), None if P is None else P.to(acc), None if s0 is None else s0.to(acc)
        )
    return S_all.to(U.dtype).contiguous()


def pararnn_bwd_reference(
    cell: str,
    U: Tensor,
    A: Tensor,
    P: Optional[Tensor],
    s0: Optional[Tensor],
    S_all: Tensor,
    dS: Tensor,
    ds_last: Tensor,
):
    """Exact gradient at the solution S_all (docs/spec.md §1.2). Returns (dU, dA, dP or None, ds0).

    λ_t = g_t + J_{t+1}ᵀ λ_{t+1} (g_T also gets ds_last) is solved by the reference scan in reverse
    time; then the VJP of the cell at (s*_{t−1}, x_t) for all t at once (``cell_vjp``) gives dU,
    dA, dP (summed over B and T) and ds0 = J_1ᵀ λ_1.
    """
    io = U.dtype
    U, A, P, first = _in_acc(cell, U, A, P, s0)
    acc = U.dtype
    prev = _shift(S_all.to(acc), first)
    _, J = cell_step_jac(cell, U, A, P, prev)  # [B, T, N, S, S]
    g = dS.to(acc).clone()
    g[:, -1] += ds_last.to(acc)
    Jt_next = torch.cat([J[:, 1:].transpose(-1, -2), torch.zeros_like(J[:, :1])], dim=1)  # J_{t+1}ᵀ
    lam, _ = linear_recurrence_scan(Jt_next, _to_scan(g).contiguous(), None, True)
    lam = _to_scan(lam)  # [B, T, S, N]
    dU, dA, dP, dprev = cell_vjp(cell, U, A, P, prev, lam)
    ds0 = dprev[:, 0].contiguous()
    return dU.to(io), dA, dP, ds0.to(io)
