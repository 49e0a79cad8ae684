"""Sequence-parallel ParaRNN for the built-in cells: ``nlseq.distributed.pararnn`` (docs/distributed.md).

Every rank holds a contiguous piece of the sequence, U [B, T_r, 3, N] (rank order = time order,
uneven pieces allowed), and gets back its piece of the states, S [B, T_r, S, N]. Two strategies:

- ``"all_to_all"`` (here): the built-in cells are diagonal over channels (docs/spec.md §1.3, docs/spec.md
  §1.3), so channels never talk to each other. One all-to-all turns the time-split projection
  [B, T_r, 3, N] into a channel split [B, T, 3, N/P]; each rank runs the single-process fused op
  ``nlseq.pararnn`` on its N/P channels over the whole sequence (A, P, s0 sliced to those
  channels); one all-to-all brings the states back to the time split. Exact: every channel is
  computed by the same kernel as in one process (bit-identical on the cpp backend), and there is no
  communication inside the Newton iterations. Needs N divisible by the group size.
- ``"state"``: Newton across ranks with the distributed scan (``nlseq.distributed.newton``);
  each iteration moves only boundary states and scan summaries.

Gradients: U's gradient is this rank's piece of the single-process gradient of the sum of every
rank's loss. A, P and s0 are taken to be replicated (the same tensor on every rank, as parameters
are); each rank computes the gradient of its channels and one all_gather completes it, so after
``loss.backward()`` every rank holds the full single-process gradient of A, P and s0 — no extra
all-reduce over the sequence-parallel group (do not add one: it would count it P times).

Collectives per call (all_to_all strategy): forward 3 (one all_gather of a 16-int64 metadata vector
that also checks that the ranks agree, and the two all-to-alls), plus one 2-element all_reduce
(MAX) of the Newton iteration count and residual in Newton mode; backward 3 (two all-to-alls and
one all_gather of the parameter gradients).

Every rank must call with the same cell, strategy, B, N, dtype, mode and requires_grad flags:
the metadata exchange turns a disagreement (or a bad argument on any rank) into the same error on
every rank instead of a hang. As with every autograd collective, every rank must run the backward:
a rank whose loss does not use its output would leave the others waiting (add ``0 * y.sum()``).
"""

from __future__ import annotations

import struct
import warnings
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ..ops import pararnn as _op
from ..ops.pararnn import CELLS, MODES, ON_NONCONVERGENCE, NewtonInfo
from ._group import GroupInfo, resolve_group

OP = "distributed.pararnn"
STRATEGIES = ("all_to_all", "state")
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# torch 2.13 renames all_gather_into_tensor to all_gather_single (the old name warns)
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


# ---------------------------------------------------------------- the two layouts and the all-to-alls
def _seq_to_chan(x: Tensor, lengths: list[int], info: GroupInfo) -> Tensor:
    """[B, T_r, M, N] time piece → [B, T, M, N/P] channel piece (one all_to_all_single)."""
    B, Tr, M, N = x.shape
    Pn, n = info.size, N // info.size
    send = x.reshape(B, Tr, M, Pn, n).permute(3, 1, 0, 2, 4).reshape(Pn * Tr, B, M, n)  # rows for rank s first
    recv = x.new_empty(sum(lengths), B, M, n)  # [T, B, M, n]: rank s's steps arrive in rank order
    dist.all_to_all_single(
        recv, send.contiguous(), output_split_sizes=lengths, input_split_sizes=[Tr] * Pn, group=info.group
    )
    return recv.permute(1, 0, 2, 3)


def _chan_to_seq(y: Tensor, lengths: list[int], info: GroupInfo) -> Tensor:
    """[B, T, M, N/P] channel piece → [B, T_r, M, N] time piece (one all_to_all_single)."""
    B, _, M, n = y.shape
    Pn, Tr = info.size, lengths[info.rank]
    send = y.permute(1, 0, 2, 3).contiguous()  # [T, B, M, n]: rank s's steps are rows [off_s, off_s + T_s)
    recv = y.new_empty(Pn * Tr, B, M, n)  # rank s's channels of my steps, in rank (= channel) order
    dist.all_to_all_single(recv, send, output_split_sizes=[Tr] * Pn, input_split_sizes=lengths, group=info.group)
    return recv.reshape(Pn, Tr, B, M, n).permute(2, 1, 3, 0, 4).reshape(B, Tr, M, Pn * n)


def _gather_channels(pieces: list[Optional[Tensor]], shapes: list[tuple[int, ...]], info: GroupInfo) -> list[Tensor]:
    """Full tensors [..., N] from every rank's channel slices [..., N/P], all in one all_gather."""
    dtype = pieces[0].dtype
    for p in pieces[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    flat = torch.cat([p.reshape(-1).to(dtype) for p in pieces])
    out = flat.new_empty(info.size * flat.numel())
    _all_gather_flat(out, flat, group=info.group)
    out = out.view(info.size, -1)
    full, off = [], 0
    for p, shape in zip(pieces, shapes):
        k = p.numel()
        block = out[:, off : off + k].reshape(info.size, *p.shape)  # [P, ..., n]
        lead = p.dim() - 1
        full.append(block.permute(*range(1, lead + 1), 0, lead + 1).reshape(shape).to(p.dtype))
        off += k
    return full


# ---------------------------------------------------------------- argument checks, agreed by every rank
_META = (
    "error",
    "T_r",
    "B",
    "N",
    "cell",
    "dtype",
    "has_P",
    "has_s0",
    "mode",
    "grad_U",
    "grad_A",
    "grad_P",
    "grad_s0",
    "max_iters",
    "tol",
    "on_nonconvergence",
)


def _float_bits(x: Optional[float]) -> int:
    """A float (or None) as an int64 the ranks can compare exactly."""
    return -1 if x is None else struct.unpack("<q", struct.pack("<d", float(x)))[0]


_LOCAL_LAYOUT = "(U [B, T_local, 3, N], A [3, N], P [2, N] (lstm only), s0 [B, S, N], S = 1 gru / 2 lstm)"


def _local_checks(cell, U, A, P, s0, mode, on_nonconvergence, max_iters, size) -> None:
    op = OP
    _op.check_pararnn_inputs(op, cell, U, A, P, s0, mode, on_nonconvergence, _LOCAL_LAYOUT)
    N = U.shape[-1]
    if max_iters is not None and int(max_iters) < 0:
        raise ValueError(f"nlseq.{op}: max_iters must be >= 0, got {max_iters}")
    if N % size:
        raise ValueError(
            f"nlseq.{op}: strategy='all_to_all' splits the N = {N} channels over the {size} ranks of "
            f"the group, so N must be divisible by {size}; use a hidden size divisible by the group "
            f"size or strategy='state'"
        )


def _agree(local_error: Optional[BaseException], meta: list[int], device: torch.device, info: GroupInfo) -> list[int]:
    """All-gather every rank's metadata; raise the same way on every rank if any rank failed its
    checks or the ranks disagree. Returns every rank's T_r."""
    mine = torch.tensor(meta, dtype=torch.int64, device=device)
    everyone = mine.new_empty(info.size * len(meta))
    _all_gather_flat(everyone, mine, group=info.group)
    rows = everyone.view(info.size, len(meta)).tolist()
    bad = [r for r, row in enumerate(rows) if row[0]]
    if bad:
        if local_error is not None:
            raise local_error
        raise ValueError(
            f"nlseq.{OP}: rank(s) {bad} of the group rejected their arguments (see the error on those "
            f"ranks); every rank stops here"
        )
    for k, name in enumerate(_META):
        if name in ("error", "T_r"):
            continue
        vals = [row[k] for row in rows]
        if len(set(vals)) > 1:
            raise ValueError(
                f"nlseq.{OP}: the ranks disagree on {name} (by rank: {vals}); every rank must pass "
                f"the same cell, mode, batch B, hidden size N, dtype, optional tensors and "
                f"requires_grad flags, and its own contiguous piece of the sequence"
            )
    return [row[1] for row in rows]


# ---------------------------------------------------------------- the all_to_all strategy (one autograd node)
class _AllToAllPararnn(torch.autograd.Function):
    """(U piece, A, P, s0) → S piece. One node, so that every rank runs the backward collectives in
    the same order: all_to_all(dS) → the op's backward on this rank's channels → all_to_all(dU),
    all_gather(dA, dP, ds0)."""

    @staticmethod
    def forward(ctx, U, A, P, s0, cell, lengths, info, opts):
        Pn, r = info.size, info.rank
        N = U.shape[-1]
        n = N // Pn
        cols = slice(r * n, (r + 1) * n)
        U_ch = _seq_to_chan(U.detach(), lengths, info)
        A_r = A.detach()[:, cols]
        P_r = None if P is None else P.detach()[:, cols]
        s0_r = None if s0 is None else s0.detach()[..., cols].contiguous()
        needs = ctx.needs_input_grad[:4]
        leaves = [t.requires_grad_(g) if t is not None else None for t, g in zip((U_ch, A_r, P_r, s0_r), needs)]
        with torch.enable_grad():
            S_ch, info_local = _solve(cell, *leaves, opts, info)
        ctx.info, ctx.lengths, ctx.cell = info, lengths, cell
        ctx.shapes = [None if t is None else tuple(t.shape) for t in (U, A, P, s0)]
        ctx.graph = (S_ch, leaves) if any(needs) else None
        S = _chan_to_seq(S_ch.detach(), lengths, info)
        iters, residual = info_local[0].detach(), info_local[1].detach()
        ctx.mark_non_differentiable(iters, residual)
        return S, iters, residual

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dS, _diters, _dres):
        info, lengths = ctx.info, ctx.lengths
        S_ch, leaves = ctx.graph
        ctx.graph = None
        dS_ch = _chan_to_seq_T(dS, S_ch, lengths, info)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = torch.autograd.grad(S_ch, wanted, dS_ch, allow_unused=True)
        g = dict(zip([id(t) for t in wanted], grads))
        out: list[Optional[Tensor]] = []
        for t in leaves:
            if t is None or not t.requires_grad:
                out.append(None)
                continue
            gk = g[id(t)]
            out.append(torch.zeros_like(t) if gk is None else gk)
        dU = None if out[0] is None else _chan_to_seq(out[0], lengths, info)
        idx = [k for k in (1, 2, 3) if out[k] is not None]
        rest: list[Optional[Tensor]] = [None, None, None]
        if idx:  # one all_gather completes the channel slices of A, P and s0
            full = _gather_channels([out[k] for k in idx], [ctx.shapes[k] for k in idx], info)
            for k, f in zip(idx, full):
                rest[k - 1] = f
        return dU, rest[0], rest[1], rest[2], None, None, None, None


def _chan_to_seq_T(dS: Optional[Tensor], S_ch: Tensor, lengths: list[int], info: GroupInfo) -> Tensor:
    """The transpose of _chan_to_seq: a time piece of dS back to the channel split."""
    if dS is None:  # this rank's loss did not use S: its piece of the gradient is zero (still join the collective)
        B, _, M, n = S_ch.shape
        dS = S_ch.new_zeros(B, lengths[info.rank], M, n * info.size)
    return _seq_to_chan(dS.contiguous(), lengths, info)


def _info_tensors(inf, like: Tensor) -> tuple[Tensor, Tensor]:
    """NewtonInfo's iterations and residual as 0-dim tensors on ``like``'s device (for the collectives)."""
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    return (
        torch.as_tensor(inf.iterations, dtype=torch.int64, device=like.device),
        torch.as_tensor(inf.residual, dtype=acc, device=like.device),
    )


def _solve(cell, U_ch, A_r, P_r, s0_r, opts, info):
    """The single-process op on this rank's channels; Newton's outcome is agreed by every rank
    (all_reduce MAX of the iteration count and residual) so that non-convergence is raised,
    warned about or finished sequentially on every rank alike, with a global NewtonInfo."""
    mode, rmode, max_iters, tol, on_nc, backend = opts
    if rmode != "newton" or U_ch.shape[1] == 0:
        S, inf = _op.pararnn(
            cell,
            U_ch,
            A_r,
            P_r,
            s0_r,
            mode=mode,
            max_iters=max_iters,
            tol=tol,
            on_nonconvergence=on_nc,
            backend=backend,
            return_info=True,
        )
        return S, _info_tensors(inf, U_ch)
    with warnings.catch_warnings():  # this rank's verdict is not the group's: decided below
        warnings.simplefilter("ignore", RuntimeWarning)
        S, inf = _op.pararnn(
            cell,
            U_ch,
            A_r,
            P_r,
            s0_r,
            mode="newton",
            max_iters=max_iters,
            tol=tol,
            on_nonconvergence="warn",
            backend=backend,
            return_info=True,
        )
    iters_t, res = _info_tensors(inf, U_ch)
    res_dtype = res.dtype
    res = res.to(torch.float64)
    res = torch.where(torch.isnan(res), torch.full_like(res, float("inf")), res)  # NaN never converges
    both = torch.stack([res, iters_t.to(torch.float64)])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=info.group)
    residual = both[0].to(res_dtype)
    iters = both[1].to(torch.int64)
    r = float(both[0])
    if not r <= tol:
        msg = _op._nonconvergence_message(
            f"nlseq.{OP} ({cell}, all_to_all, max over the group's channels)", r, tol, int(both[1]), max_iters
        )
        if on_nc == "raise":
            raise RuntimeError(msg)
        if on_nc == "warn":
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
        else:  # as in one process: every channel finishes with the exact sequential pass
            _op.log.warning("%s Finishing with a sequential pass as requested.", msg)
            S = _op.pararnn(cell, U_ch, A_r, P_r, s0_r, mode="sequential", backend=backend)
    return S, (iters, residual)


def _all_to_all(cell, U, A, P, s0, info, mode, max_iters, tol, on_nonconvergence, backend, return_info):
    error, meta = None, [0] * len(_META)
    try:
        _local_checks(cell, U, A, P, s0, mode, on_nonconvergence, max_iters, info.size)
        info.check_device("pararnn", "U", U)
        name = _op._resolve(backend, U.device)
        if U.dtype == torch.float64 and name in ("cuda", "triton"):
            raise TypeError(
                f"nlseq.{OP}: backend {name!r} accepts float32, bfloat16 and float16; float64 runs on "
                f"backend='cpp' or 'reference'"
            )
        rmode = _op._resolve_mode(mode, name)
        grad = torch.is_grad_enabled()
        meta = [
            0,
            U.shape[1],
            U.shape[0],
            U.shape[3],
            CELLS.index(cell),
            _DTYPES.index(U.dtype),
            P is not None,
            s0 is not None,
            MODES.index(rmode),
            grad and U.requires_grad,
            grad and A.requires_grad,
            grad and P is not None and P.requires_grad,
            grad and s0 is not None and s0.requires_grad,
            -1 if max_iters is None else int(max_iters),
            _float_bits(tol),
            ON_NONCONVERGENCE.index(on_nonconvergence),
        ]
    except (ValueError, TypeError) as e:
        error, meta[0] = e, 1
    if isinstance(U, Tensor):
        device = U.device
    else:  # still join the agreement, on a device the group can move, so the other ranks raise too
        device = torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")
    lengths = _agree(error, [int(v) for v in meta], device, info)
    max_iters = _op.DEFAULT_MAX_ITERS if max_iters is None else int(max_iters)
    tol = _op.default_tol(U.dtype) if tol is None else float(tol)
    opts = (mode, rmode, max_iters, tol, on_nonconvergence, backend)
    S, iters, residual = _AllToAllPararnn.apply(U, A, P, s0, cell, lengths, info, opts)
    if return_info:
        return S, NewtonInfo(int(iters), float(residual), tol, rmode, on_nonconvergence)
    return S


# ---------------------------------------------------------------- public entry points
def pararnn(
    cell: str,
    U: Tensor,
    A: Tensor,
    P: Optional[Tensor] = None,
    s0: Optional[Tensor] = None,
    *,
    group: Optional[Any] = None,
    strategy: str = "all_to_all",
    mode: str = "auto",
    max_iters: Optional[int] = None,
    tol: Optional[float] = None,
    on_nonconvergence: str = "raise",
    backend: str = "auto",
    return_info: bool = False,
):
    """``nlseq.pararnn`` on a sequence split over the ranks of ``group`` (see the module docstring).

    Args as ``nlseq.pararnn``, with U this rank's contiguous piece [B, T_local, 3, N] (rank order =
    time order; uneven pieces and empty pieces allowed) and A [3, N], P [2, N], s0 [B, S, N] the
    same full tensors on every rank (s0 is the state before the first step of the whole sequence).
    ``group``: a ProcessGroup, a 1-D DeviceMesh or None (the world). ``strategy``: "all_to_all"
    (N divisible by the group size; exact, no communication inside Newton) or "state" (Newton
    across ranks with the distributed scan; ``nlseq.distributed.newton.pararnn_state``).

    Returns this rank's states S [B, T_local, S, N] (and a ``NewtonInfo`` whose iterations and
    residual are the maxima over the group, with ``return_info``). The final state of the whole
    sequence is on the last rank with steps; ``final_state`` gives it to every rank.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"nlseq.{OP}: strategy must be one of {STRATEGIES}, got {strategy!r}")
    info = resolve_group(group, op="pararnn")
    if strategy == "state":
        try:
            from .newton import pararnn_state
        except ImportError as e:  # pragma: no cover - present once the distributed Newton lands
            raise NotImplementedError(
                f"nlseq.{OP}: strategy='state' needs nlseq.distributed.newton, which this build does not have"
            ) from e
        return pararnn_state(
            cell,
            U,
            A,
            P,
            s0,
            group=group,
            mode=mode,
            max_iters=max_iters,
            tol=tol,
            on_nonconvergence=on_nonconvergence,
            backend=backend,
            return_info=return_info,
        )
    return _all_to_all(cell, U, A, P, s0, info, mode, max_iters, tol, on_nonconvergence, backend, return_info)


class _FinalState(torch.autograd.Function):
    """(S piece) → (S piece, final state on every rank). Forward: one all_gather of every rank's
    last state and a has-steps flag; backward: one all_reduce (SUM) of the final state's gradient,
    which the owning rank adds to its last step."""

    @staticmethod
    def forward(ctx, S, info):
        B, Tr, Sz, N = S.shape
        last = S[:, -1] if Tr else S.new_zeros(B, Sz, N)
        flag = S.new_full((1,), float(Tr > 0))
        mine = torch.cat([flag, last.reshape(-1)])
        every = mine.new_empty(info.size * mine.numel())
        _all_gather_flat(every, mine, group=info.group)
        every = every.view(info.size, -1)
        owners = [r for r in range(info.size) if float(every[r, 0]) > 0]
        ctx.info, ctx.owner, ctx.Tr = info, (owners[-1] if owners else -1), Tr
        if not owners:
            flag = torch.zeros((), dtype=torch.bool)
            ctx.mark_non_differentiable(flag)
            return S.view_as(S), S.new_zeros(B, Sz, N), flag
        flag = torch.ones((), dtype=torch.bool)
        ctx.mark_non_differentiable(flag)
        return S.view_as(S), every[ctx.owner, 1:].reshape(B, Sz, N).clone(), flag

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dS, dlast, _dflag):
        if dlast is None:
            dlast = (
                torch.zeros(dS.shape[0], dS.shape[2], dS.shape[3], dtype=dS.dtype, device=dS.device)
                if dS is not None
                else None
            )
        if dlast is not None:
            dlast = dlast.contiguous().clone()
            dist.all_reduce(dlast, group=ctx.info.group)  # the final state is replicated: its gradients add up
        if ctx.info.rank == ctx.owner and dlast is not None:
            dS = dS.clone() if dS is not None else dlast.new_zeros(dlast.shape[0], ctx.Tr, *dlast.shape[1:])
            dS[:, -1] += dlast
        return dS, None


def final_state(S: Tensor, *, group: Optional[Any] = None) -> tuple[Tensor, Optional[Tensor]]:
    """``(S, s_last)``: S unchanged and the final state of the whole sequence [B, S, N] on every
    rank (None when no rank has a step). Differentiable; its backward adds ``s_last``'s gradient,
    summed over the ranks, to the last step of the rank that owns it (one all_reduce). Put S
    through it and use the returned S, so that one autograd node carries both outputs."""
    info = resolve_group(group, op="final_state")
    if not isinstance(S, Tensor) or S.dim() != 4:
        raise ValueError(
            f"nlseq.distributed.final_state: S must be this rank's states [B, T_local, S, N], got "
            f"{tuple(S.shape) if isinstance(S, Tensor) else type(S).__name__}"
        )
    S_out, last, any_steps = _FinalState.apply(S, info)
    return S_out, (last if bool(any_steps) else None)


class _GradSum(torch.autograd.Function):
    """Identity forward; backward sums the gradients over the group (one all_reduce for all)."""

    @staticmethod
    def forward(ctx, info, *ts):
        ctx.info = info
        ctx.like = [(t.shape, t.dtype, t.device) for t in ts]
        return tuple(t.view_as(t) for t in ts)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *gs):
        gs = [torch.zeros(s, dtype=d, device=v) if g is None else g for g, (s, d, v) in zip(gs, ctx.like)]
        dtype = gs[0].dtype
        for g in gs[1:]:
            dtype = torch.promote_types(dtype, g.dtype)
        flat = torch.cat([g.reshape(-1).to(dtype) for g in gs])
        dist.all_reduce(flat, group=ctx.info.group)
        out, off = [], 0
        for g in gs:
            out.append(flat[off : off + g.numel()].view_as(g).to(g.dtype))
            off += g.numel()
        return (None, *out)


def grad_sum(*tensors: Tensor, group: Optional[Any] = None) -> tuple[Tensor, ...]:
    """The tensors unchanged, with their gradients summed over ``group`` in backward (one all_reduce).

    For parameters used on this rank's piece of the sequence only (an input projection): the sum
    over the group is the single-process gradient, so every rank ends with the full gradient."""
    info = resolve_group(group, op="grad_sum")
    return _GradSum.apply(info, *tensors)


__all__ = ["pararnn", "final_state", "grad_sum", "STRATEGIES"]
