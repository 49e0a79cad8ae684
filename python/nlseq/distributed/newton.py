"""Newton across ranks: ``newton_solve`` for user cells and ``pararnn_state`` for the built-in cells.

The sequence is split contiguously over the ranks of a group (rank order = time order). Every
Newton iteration (docs/spec.md §1.1) is the single-process one on the whole sequence:

1. evaluate the cell and its Jacobian on this rank's steps, from the iterate shifted by one step;
   the step before this rank's first is the previous rank's boundary state;
2. the residual max_t |h_t − f(h_{t−1}, x_t)| is all-reduced with MAX (2 numbers, a NaN flag and
   the value), so every rank takes the same decision: stop (converged, out of iterations, or a NaN
   residual, which stops at once) or go on;
3. the linear recurrence of the Newton step is solved by the sequence-parallel scan
   (``nlseq.distributed.scan.solve``: one all_gather of [B, N, K·K + K] summaries). The scan's
   fold gives every rank its incoming state, which is the previous rank's new boundary state, so
   after the initial guess (one all_gather of the boundary states) no other exchange is needed.

So an iteration costs 2 collectives and the final convergence test 1. The backward is the
implicit one of docs/spec.md §1.2: one sequence-parallel adjoint scan at the solution
(``nlseq.distributed.scan.adjoint``) and the VJP of the cell. See docs/sequence_parallel_scan.md.
"""

from __future__ import annotations

import math
import struct
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor

from .. import registry as _registry
from .._checks import check_tensor
from ..ops import pararnn as _op
from ..ops.pararnn import CELLS, MODES, ON_NONCONVERGENCE, NewtonInfo, default_tol
from ..ops.scan import IMPLEMENTED as _SCAN_BACKENDS
from ..ops.scan import MAX_BLOCK_SIZE
from ..reference import pararnn as _ref
from ..reference.scan import acc_dtype
from ._group import GroupInfo, resolve_group
from .scan import _DTYPE_CODES, _product, adjoint, agree, all_gather_stacked, solve

log = _op.log


# ---------------------------------------------------------------- shared pieces
def _bits(x: float) -> int:
    """A float as an int64 bit pattern, so the metadata exchange can check it is the same on every rank."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _global_residual(res: Tensor, info: GroupInfo) -> float:
    """max over the group of every rank's residual (one all_reduce MAX); NaN on any rank gives NaN.

    A NaN is sent as +inf with a flag, because MAX of a NaN is not reliably NaN in every backend.
    """
    res = res.detach().reshape(()).to(torch.float64)
    nan = torch.isnan(res)
    t = torch.stack([torch.where(nan, torch.full_like(res, math.inf), res), nan.to(res.dtype)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.group)
    value, flag = t.tolist()
    return math.nan if flag > 0 else value


def _previous_with_steps(rank: int, lengths: Sequence[int]) -> Optional[int]:
    """The nearest rank before ``rank`` that holds steps (None: ``rank``'s steps start the sequence)."""
    for r in range(rank - 1, -1, -1):
        if lengths[r] > 0:
            return r
    return None


def _broadcast_chain(local_pass: Callable[[Tensor], Tensor], init: Tensor, lengths: Sequence[int], info: GroupInfo):
    """Sequential pass over the ranks in order: each rank with steps runs ``local_pass`` from the
    end state of the previous one, which it receives by broadcast (one per rank with steps but the
    last). Returns (this rank's result or None, the state it started from)."""
    carry, out, start = init, None, init
    with_steps = [r for r in range(info.size) if lengths[r] > 0]
    for r in with_steps:
        if r == info.rank:
            start = carry
            out = local_pass(carry)
            end = out[:, -1].contiguous()
        else:
            end = torch.empty_like(init)
        if r != with_steps[-1]:
            dist.broadcast(end, src=dist.get_global_rank(info.group, r), group=info.group)
        carry = end
    return out, start


def _nonconvergence(where: str, residual: float, tol: float, iters: int, max_iters: int, policy: str) -> bool:
    """Raise / warn for a Newton solve that did not converge (the same decision on every rank).
    Returns True when the caller should finish with a sequential pass."""
    msg = _op._nonconvergence_message(where, residual, tol, iters, max_iters) + " (the same on every rank of the group)"
    if policy == "raise":
        raise RuntimeError(msg)
    if policy == "warn":
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return False
    log.warning("%s Finishing with a sequential pass as requested.", msg)
    return True


# ---------------------------------------------------------------- built-in cells: the "state" strategy
_PARARNN_FIELDS = (
    "cell",
    "B",
    "N",
    "dtype",
    "P",
    "s0",
    "mode",
    "max_iters",
    "tol",
    "policy",
    "grad_U",
    "grad_A",
    "grad_P",
    "grad_s0",
)
_PARARNN_LABELS = {
    "cell": "cell",
    "B": "batch size B",
    "N": "channel count N",
    "dtype": "dtype",
    "P": "peepholes P (given or None)",
    "s0": "s0 (given on every rank, or on none)",
    "mode": "mode",
    "max_iters": "max_iters",
    "tol": "tol",
    "policy": "on_nonconvergence",
    "grad_U": "requires_grad of U",
    "grad_A": "requires_grad of A",
    "grad_P": "requires_grad of P",
    "grad_s0": "requires_grad of s0",
}


_LOCAL_LAYOUT = "(U [B, T_local, 3, N], A [3, N], P [2, N] (lstm only), s0 [B, S, N], S = 1 gru / 2 lstm)"


def _check_pararnn(cell, U, A, P, s0, mode, max_iters, tol, on_nonconvergence, backend, info):
    op = "distributed.pararnn_state"
    _op.check_pararnn_inputs(op, cell, U, A, P, s0, mode, on_nonconvergence, _LOCAL_LAYOUT)
    B, T, _, N = U.shape
    max_iters = _op.DEFAULT_MAX_ITERS if max_iters is None else int(max_iters)
    if max_iters < 0:
        raise ValueError(f"nlseq.{op}: max_iters must be >= 0, got {max_iters}")
    tol = default_tol(U.dtype) if tol is None else float(tol)
    info.check_device("pararnn_state", "U", U)
    name = _registry.resolve(backend, U.device, "linear_recurrence", _SCAN_BACKENDS)
    if U.dtype == torch.float64 and name in ("cuda", "triton"):
        raise TypeError(
            f"nlseq.{op}: backend {name!r} accepts float32, bfloat16 and float16; float64 runs on "
            f"backend='cpp' or 'reference'"
        )
    return B, T, N, max_iters, tol, name


def _to_scan(x: Tensor) -> Tensor:  # [B, T, S, N] <-> [B, T, N, S]
    return x.transpose(-1, -2)


def _shift(H: Tensor, first: Tensor) -> Tensor:
    """The states before each local step, [first, H_1, .., H_{T−1}]; empty for an empty piece."""
    return _ref._shift(H, first) if H.shape[1] else H


def _pararnn_newton(cell, U, A, P, init, lengths, max_iters, tol, name, info):
    """Newton across ranks in the accumulation dtype (U, A, P, init already in it).
    Returns (S [B, T, S, N], the state before this rank's first step, iterations, global residual)."""
    B, T, _, N = U.shape
    S = init.shape[1]
    starts = _previous_with_steps(info.rank, lengths) is None
    prev = U.new_zeros(B, T, S, N)
    if starts and T > 0:
        prev[:, 0] = init
    H = _ref.cell_step(cell, U, A, P, prev)  # the initial guess f(0, x_t) (s0 at the first step)
    lasts = all_gather_stacked(H[:, -1] if T > 0 else init, info)  # the initial guess's boundary states
    before = _previous_with_steps(info.rank, lengths)
    first = init if before is None else lasts[before]
    iters = 0
    while True:
        prev = _shift(H, first)
        f, J = _ref.cell_step_jac(cell, U, A, P, prev)
        residual = _global_residual((H - f).abs().max() if H.numel() else H.new_zeros(()), info)
        if math.isnan(residual) or residual <= tol or iters >= max_iters:
            break
        rhs = f - _to_scan((J @ _to_scan(prev).unsqueeze(-1)).squeeze(-1))  # f_t − J_t s_{t−1}
        H_scan, s_in, _, _ = solve(J, _to_scan(rhs).contiguous(), _to_scan(init), False, name, info)
        H, first = _to_scan(H_scan), _to_scan(s_in)  # s_in: the previous rank's new last state
        iters += 1
    return H, first, iters, residual


def _pararnn_sequential(cell, U, A, P, init, lengths, name, info):
    """The exact sequential pass, rank after rank (one broadcast of the end state per rank with steps)."""
    U, A, P = U.contiguous(), A.contiguous(), None if P is None else P.contiguous()
    _op._implemented()  # registers the CUDA sequential kernel where the extension has one
    local = lambda s: _op._sequential(name, cell, U, A, P, s.contiguous())  # noqa: E731  (reference loop where none)
    S, first = _broadcast_chain(local, init, lengths, info)
    if S is None:
        S = U.new_zeros(U.shape[0], 0, init.shape[1], U.shape[3])
    return S, first


class _PararnnState(torch.autograd.Function):
    @staticmethod
    def forward(ctx, U, A, P, s0, cell, lengths, opts, info):
        mode, max_iters, tol, policy, name = opts
        Ua, Aa, Pa, init = _ref._in_acc(cell, U, A, P, s0)
        iters, residual = 0, 0.0
        if mode == "sequential":
            H, first = _pararnn_sequential(cell, Ua, Aa, Pa, init, lengths, name, info)
        else:
            H, first, iters, residual = _pararnn_newton(cell, Ua, Aa, Pa, init, lengths, max_iters, tol, name, info)
            if not residual <= tol and _nonconvergence(
                f"nlseq.distributed.pararnn_state ({cell}, backend {name!r})", residual, tol, iters, max_iters, policy
            ):
                H, first = _pararnn_sequential(cell, Ua, Aa, Pa, init, lengths, name, info)
        S_all = H.to(U.dtype).contiguous()
        ctx.save_for_backward(U, A, P, s0, S_all, first)
        ctx.cell, ctx.name, ctx.info = cell, name, info
        iters_t = torch.tensor(iters, dtype=torch.int64, device=U.device)
        res_t = torch.tensor(residual, dtype=acc_dtype(U.dtype), device=U.device)
        ctx.mark_non_differentiable(iters_t, res_t)
        return S_all, iters_t, res_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dS, _diters, _dres):
        U, A, P, s0, S_all, first = ctx.saved_tensors
        info = ctx.info
        Ua, Aa, Pa, _ = _ref._in_acc(ctx.cell, U, A, P, s0)
        prev = _shift(S_all.to(Ua.dtype), first)
        _, J = _ref.cell_step_jac(ctx.cell, Ua, Aa, Pa, prev)  # [B, T, N, S, S] at the solution
        g = torch.zeros_like(prev) if dS is None else dS.to(Ua.dtype)
        # λ_t = g_t + J_{t+1}ᵀ λ_{t+1} across ranks: the adjoint of the recurrence with A = J (its db).
        # dA of that recurrence is not used, so the states passed for it are placeholders (g itself).
        gs = _to_scan(g).contiguous()
        _, lam, _, ds0 = adjoint(J, gs, _to_scan(first), gs, None, _product(J, False), False, ctx.name, info)
        dU, dA, dP, _ = _ref.cell_vjp(ctx.cell, Ua, Aa, Pa, prev, _to_scan(lam))
        # A, P and s0 are replicated: every rank returns their full gradient. ds0 (the fold's end
        # value) is already the same on every rank; dA, dP are sums over the pieces: one all_reduce.
        flat = torch.cat([dA.reshape(-1)] + ([] if dP is None else [dP.reshape(-1)]))
        dist.all_reduce(flat, group=info.group)
        dA = flat[: dA.numel()].view_as(dA).to(A.dtype)
        dP = None if P is None else flat[dA.numel() :].view_as(P).to(P.dtype)
        ds0 = None if s0 is None else _to_scan(ds0).to(s0.dtype).contiguous()
        return dU.to(U.dtype), dA, dP, ds0, None, None, None, None


def pararnn_state(
    cell: str,
    U: Tensor,
    A: Tensor,
    P: Optional[Tensor] = None,
    s0: Optional[Tensor] = None,
    *,
    mode: str = "auto",
    max_iters: Optional[int] = None,
    tol: Optional[float] = None,
    on_nonconvergence: str = "raise",
    backend: str = "auto",
    return_info: bool = False,
    group: Optional[Any] = None,
):
    """``nlseq.pararnn`` with the sequence split over the ranks of ``group``: Newton across ranks.

    Arguments as ``nlseq.pararnn``, with U this rank's contiguous piece [B, T_local, 3, N] (rank
    order = time order; uneven pieces, one step, or none) and A [3, N], P [2, N], s0 [B, S, N] the
    same on every rank (s0: the state before the first step of the whole sequence). ``group``: a
    ProcessGroup, a 1-D DeviceMesh or None (the world). ``mode``: "newton" (and "auto") iterate
    across ranks; "sequential" runs the exact sequential pass rank after rank (no parallelism over
    ranks). ``backend`` runs the scans; the cell and its Jacobian are evaluated by the PyTorch
    reference formulas (in float32, float64 for float64), as are the Newton iterations.

    Returns this rank's states S [B, T_local, S, N] in U's dtype and, with ``return_info``, a
    ``NewtonInfo`` that is the same on every rank (the global residual and iteration count). Every
    rank stops at the same iteration; non-convergence is raised (or warned, or finished
    sequentially) on every rank alike.

    Gradients: U's is this rank's piece of the single-process gradient of the sum of every rank's
    loss; A, P and s0 are replicated, and every rank gets their FULL gradient (do not all-reduce
    them again over this group). Every rank must run the backward.

    Collectives: forward 1 metadata all_gather, 1 all_gather of the initial boundary states
    [B, S, N], then per Newton iteration 1 all_reduce (MAX, 2 float64) and 1 scan all_gather
    [B, N, S·S + S], plus 1 all_reduce for the last convergence test; backward 1 adjoint all_gather
    [B, N, S·S + S] and 1 all_reduce of dA, dP [5N].
    """
    info = resolve_group(group, op="pararnn_state")
    err: Optional[BaseException] = None
    fields = dict.fromkeys(_PARARNN_FIELDS + ("T",), -1)
    grad = torch.is_grad_enabled()
    try:
        B, T, N, max_iters_, tol_, name = _check_pararnn(
            cell, U, A, P, s0, mode, max_iters, tol, on_nonconvergence, backend, info
        )
        flag = lambda t: int(grad and t is not None and t.requires_grad)  # noqa: E731
        fields = dict(
            cell=CELLS.index(cell),
            B=B,
            N=N,
            dtype=_DTYPE_CODES[U.dtype],
            P=int(P is not None),
            s0=int(s0 is not None),
            mode=MODES.index(mode),
            max_iters=max_iters_,
            tol=_bits(tol_),
            policy=ON_NONCONVERGENCE.index(on_nonconvergence),
            grad_U=flag(U),
            grad_A=flag(A),
            grad_P=flag(P),
            grad_s0=flag(s0),
            T=T,
        )
    except (TypeError, ValueError, RuntimeError) as e:
        err = e
    rows = agree("pararnn_state", info, err, fields, _PARARNN_FIELDS, _PARARNN_LABELS)
    lengths = [r["T"] for r in rows]
    run_mode = "newton" if mode == "auto" else mode  # a sequential pass would serialise the ranks
    S_all, iters, residual = _PararnnState.apply(
        U, A, P, s0, cell, lengths, (run_mode, max_iters_, tol_, on_nonconvergence, name), info
    )
    if return_info:
        return S_all, NewtonInfo(int(iters), float(residual), tol_, run_mode, on_nonconvergence)
    return S_all


# ---------------------------------------------------------------- user cells
_SOLVE_FIELDS = ("jacobian", "K", "B", "D", "dtype", "h0", "max_iters", "tol", "damping", "policy", "grad")
_SOLVE_LABELS = {
    "jacobian": "jacobian structure",
    "K": "block_size",
    "B": "batch size B",
    "D": "state size",
    "dtype": "state dtype",
    "h0": "h0 (given on every rank, or on none)",
    "max_iters": "max_iters",
    "tol": "tol",
    "damping": "damping",
    "policy": "on_nonconvergence",
    "grad": "autograd state (grad mode and requires_grad of x, h0, params)",
}
_JACOBIANS = ("diag", "block")


class _ZeroGradTo(torch.autograd.Function):
    """``x`` unchanged, with ``other`` in the graph to receive a zero gradient (h0 off rank 0, so that
    ``all_reduce(h0.grad)`` works on every rank; ``x + 0 * h0`` would turn an inf in h0 into NaN)."""

    @staticmethod
    def forward(ctx, x, other):
        ctx.other = (other.shape, other.dtype, other.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        shape, dtype, device = ctx.other
        return g, torch.zeros(shape, dtype=dtype, device=device)


class _ImplicitGrad(torch.autograd.Function):
    """Identity on y = f(h*_{t−1}, x_t) whose backward turns ∂L/∂h into λ (docs/spec.md §1.2), with
    λ_t = g_t + J_{t+1}ᵀ λ_{t+1} solved across ranks by the sequence-parallel adjoint scan."""

    @staticmethod
    def forward(ctx, y, J, flat_shape, name, info):
        ctx.save_for_backward(J)
        ctx.flat_shape, ctx.name, ctx.info = flat_shape, name, info
        return y.view_as(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (J,) = ctx.saved_tensors
        gs = g.reshape(ctx.flat_shape).contiguous()
        B, _, N, K = gs.shape
        # the adjoint of s_t = J_t s_{t−1} + b_t; its dA is unused, so g stands in for the states
        _, lam, _, _ = adjoint(
            J, gs, gs.new_zeros(B, N, K), gs, None, _product(J.to(acc_dtype(J.dtype)), False), False, ctx.name, ctx.info
        )
        return lam.reshape(g.shape), None, None, None, None


def _as_blocks(J: Tensor, jacobian: str, B: int, T: int) -> Tensor:
    """J in the block layout of the scan: diag [B, T, *state] -> [B, T, N, 1, 1]; block as is."""
    return J.reshape(B, T, -1)[..., None, None] if jacobian == "diag" else J


def newton_solve(
    step: Union[Callable[..., Tensor], torch.nn.Module],
    x: Tensor,
    h0: Optional[Tensor] = None,
    *,
    params: Sequence[Tensor] = (),
    jacobian: str = "diag",
    block_size: Optional[int] = None,
    max_iters: Optional[int] = None,
    tol: Optional[float] = None,
    damping: float = 1.0,
    on_nonconvergence: str = "raise",
    backend: str = "auto",
    return_info: bool = False,
    group: Optional[Any] = None,
):
    """``nlseq.newton_solve`` with the sequence split over the ranks of ``group``.

    Arguments as ``nlseq.newton_solve``, with x this rank's contiguous piece [B, T_local, ...] of
    the inputs (rank order = time order, at least one step per rank) and h0 [B, *state] the state
    before the first step of the whole sequence, the same on every rank (or None on every rank).
    ``jacobian`` is "diag" or "block" (K = ``block_size`` in 1..4); "dense" is not supported across
    ranks. ``group``: a ProcessGroup, a 1-D DeviceMesh or None (the world).

    Returns this rank's h [B, T_local, *state] (and a ``NewtonInfo`` that is the same on every
    rank). Every rank stops at the same iteration; non-convergence is raised (or warned, or
    finished sequentially rank after rank) on every rank alike; a NaN residual stops at once.

    Gradients: x's is this rank's piece. Parameters of ``step`` (and tensors it closes over) get
    this rank's contribution, and h0 gets its gradient on rank 0 only (zeros elsewhere when it
    requires grad): ``torch.distributed.all_reduce`` (SUM) over the group gives the full
    gradient. Every rank must run the backward.

    Collectives: forward 1 metadata all_gather and 1 all_gather of the initial boundary states,
    then 2 per Newton iteration (residual all_reduce MAX, scan all_gather [B, N, K·K + K]) and 1
    for the last convergence test; backward 1 (the adjoint all_gather).
    """
    op = "distributed.newton_solve"
    info = resolve_group(group, op="newton_solve")
    params = tuple(params)
    err: Optional[BaseException] = None
    fields = dict.fromkeys(_SOLVE_FIELDS + ("T",), -1)
    try:
        check_tensor("x", x, op=op)
        if x.dim() < 2:
            raise ValueError(f"nlseq.{op}: x must have shape [B, T_local, ...], got {tuple(x.shape)}")
        if jacobian not in _JACOBIANS:
            raise ValueError(f"nlseq.{op}: jacobian must be one of {_JACOBIANS} across ranks, got {jacobian!r}")
        if jacobian == "block":
            if block_size is None or not 1 <= int(block_size) <= MAX_BLOCK_SIZE:
                raise ValueError(
                    f"nlseq.{op}: jacobian='block' needs block_size in 1..{MAX_BLOCK_SIZE}, got {block_size!r}"
                )
            block_size = int(block_size)
        elif block_size is not None:
            raise ValueError(f"nlseq.{op}: block_size is only used with jacobian='block'")
        if on_nonconvergence not in ON_NONCONVERGENCE:
            raise ValueError(
                f"nlseq.{op}: on_nonconvergence must be one of {ON_NONCONVERGENCE}, got {on_nonconvergence!r}"
            )
        if not 0.0 < float(damping) <= 1.0:
            raise ValueError(f"nlseq.{op}: damping must be in (0, 1], got {damping}")
        if isinstance(step, torch.nn.Module) and params:
            raise ValueError(f"nlseq.{op}: pass either an nn.Module step or params, not both")
        if x.shape[1] < 1:
            raise ValueError(f"nlseq.{op}: every rank needs at least one step; this rank's x has T_local = 0")
        info.check_device("newton_solve", "x", x)
        B, T = x.shape[:2]
        with torch.no_grad():
            state_shape = _op._state_shape(step, tuple(p.detach() for p in params), x.detach(), h0)
        if jacobian == "block" and (len(state_shape) < 1 or state_shape[-1] != block_size):
            raise ValueError(
                f"nlseq.{op}: jacobian='block' needs a state [B, T, ..., K] with K = block_size = "
                f"{block_size}, got state shape {tuple(state_shape)}"
            )
        dtype = _op._state_dtype(x, h0)
        max_iters_ = _op.DEFAULT_MAX_ITERS if max_iters is None else int(max_iters)
        tol_ = default_tol(dtype) if tol is None else float(tol)
        name = _registry.resolve(backend, x.device, "linear_recurrence", _SCAN_BACKENDS)
        grads = [x, h0, *params] + (list(step.parameters()) if isinstance(step, torch.nn.Module) else [])
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in grads)
        fields = dict(
            jacobian=_JACOBIANS.index(jacobian),
            K=block_size or 1,
            B=B,
            D=math.prod(state_shape),
            dtype=_DTYPE_CODES.get(dtype, 0),
            h0=int(h0 is not None),
            max_iters=max_iters_,
            tol=_bits(tol_),
            damping=_bits(damping),
            policy=ON_NONCONVERGENCE.index(on_nonconvergence),
            grad=int(grad),
            T=T,
        )
    except (TypeError, ValueError, RuntimeError) as e:
        err = e
    agree("newton_solve", info, err, fields, _SOLVE_FIELDS, _SOLVE_LABELS)
    damping = float(damping)
    K = block_size or 1
    is_first = info.rank == 0

    with torch.no_grad():
        xd = x.detach()
        pd = tuple(p.detach() for p in params)
        init = torch.zeros(B, *state_shape, dtype=dtype, device=x.device) if h0 is None else h0.detach().to(dtype)
        zeros_prev = torch.zeros(B, T, *state_shape, dtype=dtype, device=x.device)
        if is_first:
            zeros_prev[:, 0] = init
        H = _op._call(step, pd, zeros_prev, xd)  # the initial guess f(0, x_t) (h0 at the first step)
        del zeros_prev
        lasts = all_gather_stacked(H[:, -1], info)  # the initial guess's boundary states
        first = init if is_first else lasts[info.rank - 1]
        flat = (B, T, -1, K)
        init_flat = None if h0 is None else init.reshape(B, -1, K)
        iters = 0
        while True:
            h_prev = torch.cat([first.unsqueeze(1), H[:, :-1]], dim=1)
            f, J = _op._jacobian(step, pd, h_prev, xd, jacobian, block_size)
            residual = _global_residual((H - f).abs().max(), info)
            if math.isnan(residual) or residual <= tol_ or iters >= max_iters_:
                break
            Jb = _as_blocks(J, jacobian, B, T)
            if damping == 1.0:  # solve for the new iterate: s_t = J_t s_{t−1} + (f_t − J_t h_prev_t), s_0 = h0
                rhs = f.reshape(flat) - (Jb @ h_prev.reshape(flat).unsqueeze(-1)).squeeze(-1)
                new, s_in, _, _ = solve(Jb, rhs.contiguous(), init_flat, False, name, info)
                H, first = new.reshape(H.shape), s_in.to(dtype).reshape(first.shape)
            else:  # δ_t = J_t δ_{t−1} − (H_t − f_t), δ_0 = 0; H ← H + ω δ (and so the boundary)
                delta, d_in, _, _ = solve(Jb, (f - H).reshape(flat).contiguous(), None, False, name, info)
                H = H + damping * delta.reshape(H.shape)
                first = first + damping * d_in.to(dtype).reshape(first.shape)
            iters += 1
        if not residual <= tol_ and _nonconvergence(
            f"nlseq.{op}", residual, tol_, iters, max_iters_, on_nonconvergence
        ):
            lengths = [T] * info.size  # every rank has steps (checked above)
            H, first = _broadcast_chain(lambda s: _op._sequential_user(step, pd, xd, s, H), init, lengths, info)
            h_prev = torch.cat([first.unsqueeze(1), H[:, :-1]], dim=1)
            _, J = _op._jacobian(step, pd, h_prev, xd, jacobian, block_size)

    # One evaluation at the solution with autograd on, as the single-process op: the state before
    # this rank's first step is h0 itself on rank 0 (its gradient J_1ᵀ λ_1 comes from autograd) and
    # the previous rank's boundary elsewhere (detached: λ accounts for it; h0 then gets zeros).
    if is_first:
        lead = init if h0 is None else h0.to(dtype)
    else:
        lead = first if h0 is None else _ZeroGradTo.apply(first, h0)
    h_prev = torch.cat([lead.unsqueeze(1), H[:, :-1].detach()], dim=1)
    y = _op._call(step, params, h_prev, x)
    # As in one process, the implicit backward hooks in where y needs a gradient. Every rank must agree
    # (the same step everywhere; the metadata checked x, h0 and params), or the adjoint scan would wait.
    if torch.is_grad_enabled() and y.requires_grad:
        y = _ImplicitGrad.apply(y, _as_blocks(J, jacobian, B, T), (B, T, -1, K), name, info)
    if return_info:
        return y, NewtonInfo(iters, residual, tol_, "newton", on_nonconvergence)
    return y


__all__ = ["newton_solve", "pararnn_state"]
