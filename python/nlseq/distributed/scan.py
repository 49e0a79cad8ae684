"""Sequence-parallel linear recurrence: ``nlseq.distributed.linear_recurrence`` (docs/sequence_parallel_scan.md).

Every rank holds a contiguous piece of the sequence (rank order = time order; uneven pieces, and
pieces of one step or none, are fine) and solves h_t = A_t h_{t−1} + b_t (docs/spec.md §1.1) for
its own steps, exactly, with one collective of O(B·N·K²) bytes per rank:

1. local summary: the local scan from zero (``nlseq.linear_recurrence`` on any backend) gives the
   local end state v, and a log-depth product gives M = A_last ··· A_first of the local A's, so
   that end state = M · (incoming state) + v;
2. one ``all_gather`` of every rank's summary [B, N, K·K + K] = (M, v) (K = 1 for the diagonal
   layout: [B, N, 2]);
3. every rank folds the summaries of the ranks before it (after it with ``reverse=True``), from
   h0, into its incoming state, and a local pass from that state (the ``h0`` argument of
   ``nlseq.linear_recurrence``) gives its h. Every rank folds all P summaries the same way, so
   every rank gets the same global end state h_last.

The backward mirrors it: the adjoint λ_t = g_t + A_{t+1}ᵀ λ_{t+1} (docs/spec.md §1.2) runs the
other way; a rank's adjoint summary is (M, w, ḡ) with w = A_firstᵀ λ⁰_first from its own
gradients alone, one ``all_gather`` moves them, every rank folds the ranks after it into its
incoming adjoint μ (the gradient of the next rank's incoming state), and the single-process
backward kernel with grad_h_last = μ gives dA and db.

Summaries are computed and folded in float32 (float64 for float64) whatever the I/O dtype; the
incoming state is rounded once to the I/O dtype, because the local kernels take h0 in it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .. import registry as _registry
from .._checks import check_same, check_shape, check_tensor
from ..ops.scan import IMPLEMENTED, MAX_BLOCK_SIZE, _linear_recurrence_backward_op, _linear_recurrence_op
from ..reference.scan import acc_dtype
from ._group import GroupInfo, resolve_group

OP = "linear_recurrence"
_WHERE = f"nlseq.distributed.{OP}"
_DTYPE_CODES = {torch.float64: 1, torch.float32: 2, torch.bfloat16: 3, torch.float16: 4}
_DTYPE_NAMES = {v: str(k).replace("torch.", "") for k, v in _DTYPE_CODES.items()}


# ---------------------------------------------------------------- collectives and the agreement check
def _meta_device(info: GroupInfo) -> torch.device:
    """Where small control tensors live: CUDA for NCCL (it moves nothing else), the CPU otherwise."""
    if info.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_stacked(x: Tensor, info: GroupInfo) -> Tensor:
    """[P, *x.shape]: every rank's ``x`` in group-rank order (one all_gather)."""
    flat = x.reshape(-1).contiguous()  # gloo wants the flat concatenation as the output
    out = flat.new_empty(info.size * flat.numel())
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, flat, group=info.group)
    return out.view(info.size, *x.shape)


def _describe(field: str, values: Sequence[int]) -> str:
    if field == "dtype":
        return str([_DTYPE_NAMES.get(v, "?") for v in values])
    return str(list(values))


def agree(
    op: str,
    info: GroupInfo,
    local_error: Optional[BaseException],
    fields: dict[str, int],
    same: Sequence[str],
    labels: Optional[dict[str, str]] = None,
) -> list[dict[str, int]]:
    """One all_gather of [error flag, *fields] from every rank; raises the same way on every rank.

    A rank whose own checks failed (``local_error``) re-raises its error after the exchange; the
    others raise a ValueError naming it, so no rank is left waiting in a later collective. Then
    every field in ``same`` must be equal on all ranks. Returns every rank's fields.
    """
    names = list(fields)
    row = [0 if local_error is None else 1] + [int(fields[k]) for k in names]
    rows = all_gather_stacked(torch.tensor(row, dtype=torch.int64, device=_meta_device(info)), info).tolist()
    if local_error is not None:
        raise local_error
    bad = [r for r, rw in enumerate(rows) if rw[0]]
    if bad:
        raise ValueError(
            f"nlseq.distributed.{op}: rank(s) {bad} of the group rejected their arguments (their own "
            "error says why); every rank stops here instead of waiting for them"
        )
    per_rank = [dict(zip(names, rw[1:], strict=True)) for rw in rows]
    labels = labels or {}
    for k in same:
        values = [d[k] for d in per_rank]
        if len(set(values)) > 1:
            raise ValueError(
                f"nlseq.distributed.{op}: every rank must pass the same {labels.get(k, k)}; got "
                f"{_describe(k, values)} on ranks 0..{info.size - 1} (mismatched shards?)"
            )
    return per_rank


def order(P: int, reverse: bool) -> range:
    """Group ranks in the direction of travel."""
    return range(P - 1, -1, -1) if reverse else range(P)


# ---------------------------------------------------------------- the three phases (block layout, no autograd)
def _matvec(M: Tensor, h: Tensor) -> Tensor:
    return (M @ h.unsqueeze(-1)).squeeze(-1)


def _product(A: Tensor, reverse: bool) -> Tensor:
    """M [B, N, K, K]: A_last ··· A_first in the direction of travel, by pairwise products (log T rounds)."""
    if A.shape[1] == 0:  # no steps: the identity
        B, _, N, K, _ = A.shape
        return torch.eye(K, dtype=A.dtype, device=A.device).expand(B, N, K, K)
    X = A.flip(1) if reverse else A  # X_0 is applied first
    if X.shape[-1] == 1:
        return X.prod(dim=1)
    while X.shape[1] > 1:
        T = X.shape[1]
        pair = X[:, 1 : T - T % 2 : 2] @ X[:, 0 : T - T % 2 : 2]  # later one on the left
        X = torch.cat([pair, X[:, T - 1 :]], dim=1) if T % 2 else pair
    return X[:, 0]


def _local_summary(A: Tensor, b: Tensor, reverse: bool, name: str) -> tuple[Tensor, Tensor]:
    """(M, v) in the accumulation dtype: end state = M · incoming + v for this rank's steps."""
    B, T, N, K = b.shape
    acc = acc_dtype(b.dtype)
    Aa = A.to(acc).contiguous()
    if T == 0:  # an empty piece passes the state through
        return _product(Aa, reverse), b.new_zeros(B, N, K, dtype=acc)
    _, v = _linear_recurrence_op(Aa, b.to(acc).contiguous(), None, reverse, name)
    return _product(Aa, reverse), v


def solve(A: Tensor, b: Tensor, h0: Optional[Tensor], reverse: bool, name: str, info: GroupInfo):
    """The forward of the sequence-parallel recurrence, block layout, no autograd, no agreement check.

    Returns (h [B, T, N, K] in b's dtype, s_in: this rank's incoming state, s_end: the global end
    state, M: this rank's product of A's), the last three in the accumulation dtype.
    One all_gather of [B, N, K·K + K].
    """
    B, T, N, K = b.shape
    acc = acc_dtype(b.dtype)
    M, v = _local_summary(A, b, reverse, name)
    g = all_gather_stacked(torch.cat([M.reshape(B, N, K * K), v], dim=-1), info)
    Ms, vs = g[..., : K * K].unflatten(-1, (K, K)), g[..., K * K :]
    s = b.new_zeros(B, N, K, dtype=acc) if h0 is None else h0.to(acc)
    s_in = s
    for r in order(info.size, reverse):  # the same fold, in the same order, on every rank
        if r == info.rank:
            s_in = s
        s = _matvec(Ms[r], s) + vs[r]
    if T == 0:
        h = b.new_empty(b.shape)
    else:
        h, _ = _linear_recurrence_op(A.contiguous(), b.contiguous(), s_in.to(b.dtype).contiguous(), reverse, name)
    return h, s_in, s, M


def adjoint(
    A: Tensor,
    h: Tensor,
    s_in: Tensor,
    g: Tensor,
    gbar: Optional[Tensor],
    M: Tensor,
    reverse: bool,
    name: str,
    info: GroupInfo,
):
    """The backward of :func:`solve` (block layout): (dA, db, d_in) in h's dtype and the global dh0 (acc).

    ``g`` = ∂L/∂h of this rank's steps; ``gbar`` = this rank's ∂L/∂h_last (None: no h_last output,
    and every rank must then pass None); the h_last gradients of all ranks add up and enter at the
    last step of the direction of travel. ``s_in`` is the incoming state the forward used (in h's
    dtype), ``M`` this rank's product of A's. db is the adjoint λ; d_in = A_firstᵀ λ_first is the
    gradient of this rank's incoming state (on the first rank of travel: of h0). One all_gather of
    [B, N, K·K + K] (+ K with gbar).
    """
    B, T, N, K = h.shape
    io, acc = h.dtype, acc_dtype(h.dtype)
    zero = h.new_zeros(B, N, K, dtype=acc)
    if T == 0:
        w = zero
    else:  # this rank's own contribution to the gradient of its incoming state (adjoint from zero)
        _, _, w = _linear_recurrence_backward_op(
            A.to(acc).contiguous(),
            h.to(acc).contiguous(),
            s_in.to(acc).contiguous(),
            g.to(acc).contiguous(),
            zero,
            reverse,
            name,
        )
    parts = [M.reshape(B, N, K * K), w.to(acc)] + ([] if gbar is None else [gbar.to(acc)])
    gathered = all_gather_stacked(torch.cat(parts, dim=-1), info)
    Ms, ws = gathered[..., : K * K].unflatten(-1, (K, K)), gathered[..., K * K : K * K + K]
    mu = zero if gbar is None else gathered[..., K * K + K :].sum(dim=0)  # h_last is replicated: its gradients add
    mu_in = mu
    for r in reversed(order(info.size, reverse)):  # from the last rank of travel back to the first
        if r == info.rank:
            mu_in = mu
        mu = _matvec(Ms[r].transpose(-1, -2), mu) + ws[r]
    if T == 0:
        return A.new_empty(A.shape), h.new_empty(h.shape), mu_in.to(io), mu
    dA, db, d_in = _linear_recurrence_backward_op(
        A.contiguous(),
        h.contiguous(),
        s_in.to(io).contiguous(),
        g.to(io).contiguous(),
        mu_in.to(io).contiguous(),
        reverse,
        name,
    )
    return dA, db, d_in, mu


# ---------------------------------------------------------------- autograd
class _LinearRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, b, h0, reverse, name, info):
        h, s_in, s_end, M = solve(A, b, h0, reverse, name, info)
        ctx.save_for_backward(A, h, s_in.to(b.dtype), M)
        ctx.reverse, ctx.name, ctx.info, ctx.has_h0 = reverse, name, info, h0 is not None
        return h, s_end.to(b.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_h, g_last):
        A, h, s_in, M = ctx.saved_tensors
        B, _, N, K = h.shape
        g_h = torch.zeros_like(h) if g_h is None else g_h
        g_last = h.new_zeros(B, N, K) if g_last is None else g_last
        dA, db, d_in, _ = adjoint(A, h, s_in, g_h, g_last, M, ctx.reverse, ctx.name, ctx.info)
        dh0 = None
        if ctx.has_h0:  # h0 enters on the first rank of travel only; elsewhere its gradient is zero
            dh0 = d_in if ctx.info.rank == order(ctx.info.size, ctx.reverse)[0] else torch.zeros_like(d_in)
        return dA, db, dh0, None, None, None


# ---------------------------------------------------------------- public function
_DIAG = "(diagonal layout: A and b [B, T_local, N], h0 [B, N])"
_BLOCK = "(block layout: A [B, T_local, N, K, K], b [B, T_local, N, K], h0 [B, N, K])"
_FIELDS = ("layout", "B", "N", "K", "dtype", "h0", "reverse", "grad")
LABELS = {
    "layout": "layout (diagonal or block)",
    "B": "batch size B",
    "N": "channel count N",
    "K": "block size K",
    "dtype": "dtype",
    "h0": "h0 (given on every rank, or on none)",
    "reverse": "reverse flag",
    "grad": "autograd state (grad mode and requires_grad of A, b, h0)",
    "T": "local length",
}


def _check_local(A, b, h0, reverse, backend, info: GroupInfo):
    op = "distributed." + OP
    check_tensor("b", b, op=op, ndim=(3, 4), layout=f"{_DIAG} or {_BLOCK}")
    diagonal = b.dim() == 3
    layout = _DIAG if diagonal else _BLOCK
    check_tensor("A", A, op=op, ndim=3 if diagonal else 5, layout=layout)
    check_same(op, "b", b, A=A, h0=h0)
    if diagonal:
        (B, T, N), K = b.shape, 1
        check_shape("A", A, (B, T, N), op=op, layout=layout)
    else:
        B, T, N, K = b.shape
        if not 1 <= K <= MAX_BLOCK_SIZE:
            raise ValueError(f"{_WHERE}: the block size K = b.shape[-1] must be in 1..{MAX_BLOCK_SIZE}, got {K}")
        check_shape("A", A, (B, T, N, K, K), op=op, layout=layout)
    if h0 is not None:
        check_tensor("h0", h0, op=op, layout=layout)
        check_shape("h0", h0, (B, N) if diagonal else (B, N, K), op=op, layout=layout)
    if not isinstance(reverse, bool):
        raise TypeError(f"{_WHERE}: reverse must be a bool, got {type(reverse).__name__}")
    info.check_device(OP, "b", b)
    name = _registry.resolve(backend, b.device, OP, IMPLEMENTED)
    if b.dtype == torch.float64 and name in ("cuda", "triton"):
        raise TypeError(
            f"{_WHERE}: backend {name!r} accepts float32, bfloat16 and float16; float64 runs on "
            f"backend='cpp' or 'reference'"
        )
    return diagonal, B, T, N, K, name


def linear_recurrence(
    A: Tensor,
    b: Tensor,
    h0: Optional[Tensor] = None,
    *,
    group: Optional[Any] = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """``nlseq.linear_recurrence`` on a sequence split over the ranks of ``group``: (h_local, h_last).

    Solves h_t = A_t h_{t−1} + b_t over the whole sequence (h_t = A_t h_{t+1} + b_t with
    ``reverse=True``), where this rank holds a contiguous piece of it: rank order is time order,
    pieces may have any lengths (uneven, a single step, or none). Layouts as the single-process op:
    diagonal A, b [B, T_local, N]; block A [B, T_local, N, K, K], b [B, T_local, N, K], K = 1..4.

    Args:
        h0: the state before the first step of the whole sequence ([B, N] / [B, N, K]), None for
            zeros. Pass the same tensor on every rank (or None on every rank); it is used by the
            first rank of the direction of travel (rank 0, or the last rank with ``reverse``).
        group: a ProcessGroup, a 1-D DeviceMesh or None (the world).
        backend: backend of the local scans ("auto", "cuda", "triton", "cpp", "reference").

    Returns:
        h_local: this rank's states, shaped like b, in b's dtype (exact: the single-process result
            up to rounding).
        h_last: the state at the end of the whole sequence (h_T, or h_1 with ``reverse``), the
            same on every rank.

    Gradients (the objective is the sum of every rank's loss, as when each rank's loss covers its
    own piece):
        - A, b: this rank's piece of the single-process gradient.
        - h_last is replicated: its gradients from all ranks ADD UP (a loss on h_last computed on
          every rank counts once per rank; compute it on one rank, or scale it by 1/P, to count it
          once). A loss on h_last alone works on any rank.
        - h0: the gradient is on the first rank of travel; the other ranks get zeros, so
          ``torch.distributed.all_reduce(h0.grad)`` (SUM) gives every rank the full gradient.
        Every rank must run the backward through this op (a rank whose loss does not use its
        outputs would leave the others waiting; add ``0 * h_local.sum()``). No double backward.

    Collectives: forward 2 all_gathers (10 int64 of metadata per rank, checking that the ranks
    agree on layout, B, N, K, dtype, h0, reverse and whether autograd records the call, and that
    no rank rejected its arguments, so that bad input raises on every rank instead of hanging;
    then the summaries [B, N, K·K + K] in
    the accumulation dtype); backward 1 all_gather ([B, N, K·K + 2K]). See
    docs/sequence_parallel_scan.md.
    """
    info = resolve_group(group, op=OP)
    err: Optional[BaseException] = None
    fields = dict.fromkeys(_FIELDS + ("T",), -1)
    try:
        diagonal, B, T, N, K, name = _check_local(A, b, h0, reverse, backend, info)
        # the backward is a collective too: every rank must build the autograd graph, or none
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (A, b, h0))
        fields = dict(
            layout=1 if diagonal else 2,
            B=B,
            N=N,
            K=K,
            dtype=_DTYPE_CODES[b.dtype],
            h0=int(h0 is not None),
            reverse=int(reverse),
            grad=int(grad),
            T=T,
        )
    except (TypeError, ValueError, RuntimeError) as e:
        err = e
    agree(OP, info, err, fields, _FIELDS, LABELS)

    if diagonal:  # the diagonal layout is the block layout with K = 1: views, no copies
        A, b = A[..., None, None], b[..., None]
        h0 = None if h0 is None else h0[..., None]
    h, h_last = _LinearRecurrence.apply(A, b, h0, reverse, name, info)
    if diagonal:
        h, h_last = h[..., 0], h_last[..., 0]
    return h, h_last


__all__ = ["linear_recurrence"]
