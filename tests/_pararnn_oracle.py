"""float64 sequential oracle of the built-in ParaRNN cells for the fused-kernel tests
(tests/test_pararnn_fused.py, tests/test_pararnn_cuda_emulated.py, tests/gpu/test_pararnn_cuda.py).

Written here from the equations of docs/spec.md §1.3 as a plain loop; gradients come from autograd
through it, so the kernels' Newton forward and implicit backward (docs/spec.md §1.2) are checked
against an independent derivation. Device-agnostic: the oracle runs where its inputs are.
"""

from __future__ import annotations

import torch

S_OF = {"gru": 1, "lstm": 2}

# Forward: the kernels compute in float32 and round S_all once to the I/O dtype. The oracle sees
# the same rounded inputs, so the error is float32 evaluation error (a few ulp of O(1) values per
# step, not amplified by the contracting recurrence: ~1e-7) plus half an ulp of the output dtype
# (bf16 2^-9, fp16 2^-12 relative).
FWD_TOL = {
    torch.float32: dict(atol=2e-6, rtol=2e-6),
    torch.bfloat16: dict(atol=4e-3, rtol=2**-8),
    torch.float16: dict(atol=5e-4, rtol=2**-10),
}
# Backward: dU is rounded to the I/O dtype, and in bf16/fp16 the Jacobians are evaluated at the
# stored, rounded states (a relative perturbation of ~2^-9 resp. 2^-12 of every state, which the
# adjoint recurrence sums over the effective memory of the cell, a few steps here). dA/dP are
# sums of B·T such terms whose errors add like a random walk: callers scale atol by √(B·T).
BWD_TOL = {
    torch.float32: dict(atol=5e-6, rtol=5e-6),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
    torch.float16: dict(atol=1.5e-3, rtol=1.5e-3),
}


def make_inputs(cell, B, T, N, *, dtype, with_s0, device, peepholes=True, scale_a=1.0, seed=0):
    """Cells at the paper's initialisation scale (contracting): A ~ N(0, (2/√(5N))²)·scale_a with a
    floor so tiny N still couples, U ~ N(0, 1), peepholes ~ U(−0.5, 0.5) (the paper's clip).
    Returns U (dtype), A, P (float32; P None for the GRU or without peepholes), s0 (dtype) or None."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(B, T, 3, N, generator=g, dtype=torch.float64)
    A = torch.randn(3, N, generator=g, dtype=torch.float64) * max(2 / (5 * N) ** 0.5, 0.3) * scale_a
    P = (torch.rand(2, N, generator=g, dtype=torch.float64) - 0.5) if (cell == "lstm" and peepholes) else None
    s0 = torch.randn(B, S_OF[cell], N, generator=g, dtype=torch.float64) * 0.5 if with_s0 else None
    U = U.to(dtype).to(device)
    A = A.to(torch.float32).to(device)
    P = None if P is None else P.to(torch.float32).to(device)
    s0 = None if s0 is None else s0.to(dtype).to(device)
    return U, A, P, s0


def cell_step(cell, s, u, A, P):
    """One step of docs/spec.md §1.3 in whatever dtype it is given; s [B, S, N], u [B, 3, N]."""
    if cell == "gru":
        h = s[:, 0]
        z = torch.sigmoid(A[0] * h + u[:, 0])
        r = torch.sigmoid(A[1] * h + u[:, 1])
        c = torch.tanh(A[2] * (h * r) + u[:, 2])
        return (z * c + (1 - z) * h)[:, None]
    cp, hp = s[:, 0], s[:, 1]
    pf, po = (P[0], P[1]) if P is not None else (0.0, 0.0)
    f = torch.sigmoid(A[0] * hp + pf * cp + u[:, 0])
    ct = torch.tanh(A[2] * hp + u[:, 2])
    c = f * cp + (1 - f) * ct
    o = torch.sigmoid(A[1] * hp + po * c + u[:, 1])
    return torch.stack([c, o * torch.tanh(c)], 1)


def oracle(cell, U, A, P, s0):
    """Sequential loop: S_all [B, T, S, N]; differentiable in every input."""
    B, T, _, N = U.shape
    s = s0 if s0 is not None else U.new_zeros(B, S_OF[cell], N)
    out = []
    for t in range(T):
        s = cell_step(cell, s, U[:, t], A, P)
        out.append(s)
    return torch.stack(out, 1)


def f64(x, grad=False):
    """float64 copy (same device), a leaf that requires grad if asked; None stays None."""
    if x is None:
        return None
    return x.detach().double().requires_grad_(grad)


def oracle_states(cell, U, A, P, s0):
    """The float64 oracle's S_all for (possibly low-precision) inputs."""
    return oracle(cell, f64(U), f64(A), f64(P), f64(s0))


def residual_of(cell, S_all, U, A, P, s0):
    """max_t |s_t − f(s_{t−1}, x_t)| in float64 for given states."""
    S, U, A, P, s0 = f64(S_all), f64(U), f64(A), f64(P), f64(s0)
    B, T, SS, N = S.shape
    prev = torch.cat([(s0 if s0 is not None else S.new_zeros(B, SS, N))[:, None], S[:, :-1]], 1)
    f = cell_step(cell, prev.reshape(B * T, SS, N), U.reshape(B * T, 3, N), A, P).reshape(B, T, SS, N)
    return (S - f).abs().max().item()


def oracle_grads(cell, U, A, P, s0, dS, ds_last):
    """Gradients (dU, dA, dP or None, ds0) of L = <S_all, dS> + <S_all[:, -1], ds_last> by autograd
    through the float64 loop; ds0 also when s0 is None (the gradient of a zero initial state)."""
    U64, A64, P64 = f64(U, True), f64(A, True), f64(P, True)
    s064 = (
        f64(s0, True)
        if s0 is not None
        else torch.zeros(U.shape[0], S_OF[cell], U.shape[3], device=U.device, dtype=torch.float64, requires_grad=True)
    )
    S = oracle(cell, U64, A64, P64, s064)
    loss = (S * f64(dS)).sum() + (S[:, -1] * f64(ds_last)).sum()
    loss.backward()
    return U64.grad, A64.grad, None if P64 is None else P64.grad, s064.grad
