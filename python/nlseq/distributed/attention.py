"""``nlseq.distributed.softplus_attention``: context-parallel LSSA / LSSAR (docs/context_parallel.md).

q, k and v are sharded along the sequence over the ranks of a group (``layout`` "contiguous", any
split in rank order, or "zigzag": 2P chunks, rank r holding chunks r and 2P−1−r); each rank gets
its own rows of o, and autograd gives each rank the gradients of its own shards. Three strategies:

- ``"all_gather"``: gather K and V (one all_gather), each rank runs the single-device op on its own
  query pieces against the keys they may see, with ``kv_offset`` = the piece's global start, so
  N_i, the ln N_i scale, the causal mask and LSSAR's O_i use global positions. Backward: the dK/dV
  of the full sequence are reduce-scattered to their owners.
- ``"all_to_all"`` (Ulysses): an all_to_all from sequence shards to head shards, the single-device
  op unchanged on full sequences for H/P query heads (Hkv/P key/value heads), an all_to_all back.
  Needs P | Hkv and equal shards.
- ``"ring"``: K/V blocks travel around the ring (dist.batch_isend_irecv, the next block in flight
  while the current one is computed); every block adds its unnormalised partials (Σ_j w_ij v_j and
  Σ_j w_ij per row: softplus scores are bounded and positive, so no running max). LSSAR first
  passes K alone around the ring for each row's global Σ_j softplus(s_ij) and max s_ij, then
  re-weights with those statistics. Backward: dQ stays local, dK/dV accumulate on a second ring
  that travels with the blocks and ends at their owners (LSSAR: one more K/V pass first for Γ_i).
  Backends triton, cpp and reference (the partial kernels; 'auto' on a CUDA device picks triton);
  CUDA has no partial kernels yet.

Every call first all-gathers a small metadata vector (shapes, dtype, flags, lengths, a checksum of
cu_seqlens, and whether the rank's own checks passed), so bad input raises a clear error on every
rank instead of hanging a collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .. import registry as _registry
from ..ops import softplus_attention as _ops
from ..reference import softplus_attention as _ref
from . import _blocks
from ._group import GroupInfo, resolve_group
from .sharding import LAYOUTS, zigzag_bounds

OP = "softplus_attention"
WHERE = f"nlseq.distributed.{OP}"
STRATEGIES = ("all_gather", "all_to_all", "ring")
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_BACKENDS = ("cuda", "triton", "cpp", "reference")
_META = (
    "error",
    "B",
    "H",
    "Hkv",
    "D",
    "dtype",
    "causal",
    "reweight_p",
    "qk_norm",
    "layout",
    "strategy",
    "backend",
    "cu_seqlens entries",
    "cu_seqlens checksum",
    "T_local",
)


@dataclass
class _Plan:
    info: GroupInfo
    strategy: str
    layout: str
    causal: bool
    p: float  # 0: LSSA
    qk_norm: bool
    backend: str  # as passed (all_gather / all_to_all) or resolved (ring)
    T: int
    lengths: list[int]
    bounds: list[list[tuple[int, int]]]  # every rank's global (start, stop) pieces, in local order
    segs: list[tuple[int, int]]  # packed sequences (global), [(0, T)] without cu_seqlens
    cu: Optional[Tensor]

    def pieces(self, r: int) -> list[tuple[int, int, int]]:
        return _blocks.pieces_of(self.bounds[r])


# ------------------------------------------------------------------------------ checks and metadata
def _local_checks(q, k, v, strategy, layout, causal, reweight_p, qk_norm, cu_seqlens, backend) -> list[float]:
    """This rank's checks (raising the error to report); returns its metadata vector."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{WHERE}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{WHERE}: {name} must be 4-D (q [B, H, T_local, D], k/v [B, Hkv, T_local, D]), "
                f"got shape {tuple(t.shape)}"
            )
        if t.dtype not in _DTYPES or t.dtype != q.dtype or t.device != q.device:
            raise TypeError(
                f"{WHERE}: q, k and v must share one floating dtype and device, got "
                f"{q.dtype}/{q.device}, {k.dtype}/{k.device}, {v.dtype}/{v.device}"
            )
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    if tuple(k.shape) != (B, Hkv, T, D) or tuple(v.shape) != (B, Hkv, T, D):
        raise ValueError(
            f"{WHERE}: k and v must be [B, Hkv, T_local, D] = [{B}, Hkv, {T}, {D}] (this rank's "
            f"shard of the same positions as q), got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if Hkv == 0 or H % Hkv != 0 or D == 0:
        raise ValueError(f"{WHERE}: H = {H} must be a multiple of Hkv = {Hkv} and D = {D} >= 1")
    if strategy not in STRATEGIES:
        raise ValueError(f"{WHERE}: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"{WHERE}: layout must be one of {LAYOUTS}, got {layout!r}")
    for name, flag in (("causal", causal), ("qk_norm", qk_norm)):
        if not isinstance(flag, bool):
            raise TypeError(f"{WHERE}: {name} must be a bool, got {type(flag).__name__}")
    if reweight_p is not None and (
        isinstance(reweight_p, bool)
        or not isinstance(reweight_p, (int, float))
        or not math.isfinite(reweight_p)
        or reweight_p <= 0
    ):
        raise ValueError(f"{WHERE}: reweight_p must be None (LSSA) or a finite number > 0 (LSSAR), got {reweight_p!r}")
    if not isinstance(backend, str) or backend not in _BACKENDS + ("auto",):
        raise ValueError(f"{WHERE}: backend must be one of {_BACKENDS + ('auto',)}, got {backend!r}")
    n_cu, checksum = 0.0, 0.0
    if cu_seqlens is not None:
        if (
            not isinstance(cu_seqlens, Tensor)
            or cu_seqlens.dim() != 1
            or cu_seqlens.numel() < 2
            or cu_seqlens.dtype not in (torch.int32, torch.int64)
        ):
            raise ValueError(
                f"{WHERE}: cu_seqlens must be an int32/int64 tensor [S + 1] of the global "
                f"(unsharded) cumulative sequence lengths, the same on every rank"
            )
        if B != 1:
            raise ValueError(f"{WHERE}: with cu_seqlens the batch must be packed into B = 1, got B = {B}")
        c = cu_seqlens.tolist()
        if c[0] != 0 or any(b < a for a, b in zip(c, c[1:])):
            raise ValueError(f"{WHERE}: cu_seqlens must start at 0 and not decrease, got {c}")
        n_cu = float(len(c))
        checksum = float(sum((i + 1) * x for i, x in enumerate(c)) % (2**50))
    if strategy == "ring":
        name = _registry.resolve(backend, q.device, OP, _ring_backends(backend))
        if name not in _ops.PARTIAL_FWD:
            raise NotImplementedError(
                f"{WHERE}: strategy='ring' runs on the backends {tuple(_ops.PARTIAL_FWD)} (its partial key-block "
                f"kernels); backend {name!r} does not have them yet. Use strategy='all_gather' or 'all_to_all', "
                f"which run the single-device op on every backend."
            )
        if name == "triton" and q.dtype == torch.float64:
            raise TypeError(
                f"{WHERE}: backend 'triton' accepts float32, bfloat16 and float16; float64 runs on "
                f"backend='cpp' or 'reference'"
            )
    return [
        0.0,
        B,
        H,
        Hkv,
        D,
        float(_DTYPES.index(q.dtype)),
        float(causal),
        float(reweight_p or 0.0),
        float(qk_norm),
        float(LAYOUTS.index(layout)),
        float(STRATEGIES.index(strategy)),
        float((_BACKENDS + ("auto",)).index(backend)),
        n_cu,
        checksum,
        T,
    ]


def _exchange(info: GroupInfo, meta: list[float], device) -> list[list[float]]:
    """One all_gather of every rank's metadata (float64 [len(_META)])."""
    t = torch.tensor(meta, dtype=torch.float64, device=device if info.backend == "nccl" else "cpu")
    out = [torch.empty_like(t) for _ in range(info.size)]
    dist.all_gather(out, t, group=info.group)
    return [o.tolist() for o in out]


def _ring_backends(backend: str) -> tuple[str, ...]:
    """The backends the ring may resolve ``backend`` to: for 'auto' those with partial key-block
    kernels (on a CUDA device: triton, since cuda has none); a named backend resolves as for the
    single-device op, and _local_checks says when it has no partial kernels."""
    ring = tuple(b for b in _ops.IMPLEMENTED if b in _ops.PARTIAL_FWD)
    return ring if backend == "auto" and ring else _ops.IMPLEMENTED


def _plan(info, metas, errors_here, q, strategy, layout, causal, reweight_p, qk_norm, cu_seqlens, backend) -> _Plan:
    """Check the gathered metadata; every rank reaches the same verdict and raises the same error."""
    P = info.size
    bad = [r for r, m in enumerate(metas) if m[0] != 0]
    if bad:
        if errors_here is not None:
            raise errors_here
        raise ValueError(
            f"{WHERE}: rank(s) {bad} rejected their inputs (their error says why); no rank ran the attention"
        )
    for i in range(1, len(_META) - 1):
        vals = [m[i] for m in metas]
        if any(x != vals[0] for x in vals):
            raise ValueError(f"{WHERE}: every rank must pass the same {_META[i]}; got {vals} on ranks 0..{P - 1}")
    lengths = [int(m[-1]) for m in metas]
    T = sum(lengths)
    if layout == "contiguous":
        starts = [sum(lengths[:r]) for r in range(P)]
        bounds = [[(starts[r], starts[r] + lengths[r])] for r in range(P)]
    else:
        bounds = [list(b) for b in zigzag_bounds(T, P)]
        expect = [sum(b - a for a, b in bs) for bs in bounds]
        if expect != lengths:
            raise ValueError(
                f"{WHERE}: layout='zigzag' over {P} ranks of T = {T} needs shards of lengths {expect} "
                f"(nlseq.distributed.shard(..., layout='zigzag')), got {lengths}"
            )
    Hkv = int(metas[0][3])
    if strategy == "all_to_all":
        if Hkv % P != 0:
            raise ValueError(
                f"{WHERE}: strategy='all_to_all' needs the number of ranks P = {P} to divide the number "
                f"of key/value heads Hkv = {Hkv}; use strategy='all_gather' or 'ring'"
            )
        if any(n != lengths[0] for n in lengths):
            raise ValueError(
                f"{WHERE}: strategy='all_to_all' needs shards of equal length, got {lengths}; "
                f"use strategy='all_gather' or 'ring' for uneven shards"
            )
    if strategy == "ring" and any(n == 0 for n in lengths):
        raise ValueError(f"{WHERE}: strategy='ring' needs at least one position on every rank, got {lengths}")
    segs = [(0, T)]
    cu = None
    if cu_seqlens is not None:
        c = cu_seqlens.tolist()
        if c[-1] != T:
            raise ValueError(
                f"{WHERE}: cu_seqlens must end at the global length T = {T} (the sum of the "
                f"shards {lengths}), got {c[-1]}"
            )
        segs = list(zip(c, c[1:]))
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    if strategy == "ring":
        backend = _registry.resolve(backend, q.device, OP, _ring_backends(backend))
    return _Plan(
        info, strategy, layout, causal, float(reweight_p or 0.0), qk_norm, backend, T, lengths, bounds, segs, cu
    )


# ------------------------------------------------------------------------------ public function
def softplus_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    group: Optional[Any] = None,
    strategy: str = "all_gather",
    layout: str = "contiguous",
    causal: bool = True,
    reweight_p: Optional[float] = None,
    qk_norm: bool = True,
    cu_seqlens: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tensor:
    """Context-parallel ``nlseq.softplus_attention`` on sequence shards; returns this rank's rows of o.

    q [B, H, T_local, D], k and v [B, Hkv, T_local, D]: this rank's shard (the same positions for
    q, k and v) of a self-attention over the global sequence of T = Σ T_local positions, in
    ``layout`` "contiguous" (ranks hold consecutive pieces in rank order, any lengths) or "zigzag"
    (``nlseq.distributed.shard(x, dim=2, layout="zigzag")``). The result equals the rows of the
    single-device op on the full tensors (causal positions, N_i, ln N_i and LSSAR's O_i global).

    ``cu_seqlens``: packed sequences (B = 1), the *global* cumulative lengths [S + 1] ending at T,
    the same tensor on every rank; sequences may cross shard boundaries.
    ``strategy``: "all_gather", "all_to_all" or "ring" (module docstring; costs in
    docs/context_parallel.md). ``backend`` as for ``nlseq.softplus_attention``; "ring" needs triton,
    cpp or reference. ``group``: a ProcessGroup, a 1-D DeviceMesh or None (the world).

    Differentiable in q, k and v. Every rank must call it with the same arguments (collectives);
    inconsistent or bad input raises on every rank.
    """
    info = resolve_group(group, op=OP)
    error: Optional[BaseException] = None
    try:
        meta = _local_checks(q, k, v, strategy, layout, causal, reweight_p, qk_norm, cu_seqlens, backend)
    except (TypeError, ValueError, NotImplementedError, RuntimeError) as e:  # reported on every rank below
        error = e
        meta = [1.0] + [0.0] * (len(_META) - 1)
    device = q.device if isinstance(q, Tensor) else torch.device("cpu")
    metas = _exchange(info, meta, device)
    plan = _plan(info, metas, error, q, strategy, layout, causal, reweight_p, qk_norm, cu_seqlens, backend)
    if strategy == "all_gather":
        return _all_gather_attention(q, k, v, plan)
    if strategy == "all_to_all":
        return _all_to_all_attention(q, k, v, plan)
    return _RingAttention.apply(q, k, v, plan)


# ------------------------------------------------------------------------------ all_gather
def _order(plan: _Plan, device) -> Tensor:
    """Global position of every row of the rank-order concatenation of the shards."""
    return torch.cat([torch.arange(a, b, device=device) for bs in plan.bounds for a, b in bs])


def _to_global(x: Tensor, plan: _Plan) -> Tensor:
    """Rank-order concatenation [.., T, D] → global order (zigzag only moves rows)."""
    if plan.layout == "contiguous":
        return x
    return x.index_select(-2, torch.argsort(_order(plan, x.device)))


def _to_rank_order(x: Tensor, plan: _Plan) -> Tensor:
    if plan.layout == "contiguous":
        return x
    return x.index_select(-2, _order(plan, x.device))


def _reduce_scatter(out: Tensor, inp: Tensor, group) -> None:
    # torch >= 2.13 names it reduce_scatter_single (reduce_scatter_tensor warns there)
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, inp, group=group)


class _GatherKV(torch.autograd.Function):
    """k, v shards → full K, V in global order (one all_gather); backward: reduce-scatter of dK, dV."""

    @staticmethod
    def forward(ctx, k, v, plan):
        ctx.plan = plan
        P, Lmax = plan.info.size, max(plan.lengths)
        kv = torch.stack((k, v))  # [2, B, Hkv, T_local, D]
        buf = kv.new_zeros(kv.shape[:3] + (Lmax, kv.shape[-1]))
        buf[..., : kv.shape[-2], :] = kv
        parts = [torch.empty_like(buf) for _ in range(P)]
        dist.all_gather(parts, buf, group=plan.info.group)
        full = _to_global(torch.cat([p[..., :n, :] for p, n in zip(parts, plan.lengths)], dim=-2), plan)
        return full[0], full[1]

    @staticmethod
    def backward(ctx, dk, dv):
        plan = ctx.plan
        P, Lmax, r = plan.info.size, max(plan.lengths), plan.info.rank
        d = torch.stack((dk, dv))
        ranked = _to_rank_order(d, plan)
        send = d.new_zeros((P,) + d.shape[:3] + (Lmax, d.shape[-1]))
        off = 0
        for s, n in enumerate(plan.lengths):
            send[s, ..., :n, :] = ranked[..., off : off + n, :]
            off += n
        out = d.new_empty(send.shape[1:])
        _reduce_scatter(out, send.flatten(0, 1), group=plan.info.group)
        n = plan.lengths[r]
        return out[0, ..., :n, :], out[1, ..., :n, :], None


def _all_gather_attention(q, k, v, plan: _Plan) -> Tensor:
    from ..ops.softplus_attention import softplus_attention as single

    K, V = _GatherKV.apply(k, v, plan)
    outs = []
    p = plan.p if plan.p > 0 else None
    for qa0, qb0, qo in plan.pieces(plan.info.rank):
        for s, e in plan.segs:  # each piece of each packed sequence: one call, global positions
            qa, qb = max(qa0, s), min(qb0, e)
            if qa >= qb:
                continue
            qs = q.narrow(2, qa - qa0 + qo, qb - qa)
            stop = qb if plan.causal else e  # causal rows see keys up to their own position
            outs.append(
                single(
                    qs,
                    K.narrow(2, s, stop - s),
                    V.narrow(2, s, stop - s),
                    causal=plan.causal,
                    reweight_p=p,
                    qk_norm=plan.qk_norm,
                    kv_offset=(qa - s) if plan.causal else 0,
                    backend=plan.backend,
                )
            )
    if not outs:
        return q * 0
    return torch.cat(outs, dim=2)


# ------------------------------------------------------------------------------ all_to_all (Ulysses)
def _seq_to_heads(xs: list[Tensor], plan: _Plan) -> list[Tensor]:
    """[B, Hx, T_local, D] sequence shards → [B, Hx/P, T, D] head shards (global order); one all_to_all."""
    P = plan.info.size
    chunks = [x.unflatten(1, (P, x.shape[1] // P)).transpose(0, 1).contiguous() for x in xs]  # [P, B, Hx/P, Tl, D]
    send = torch.cat([c.flatten(1) for c in chunks], dim=1)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=plan.info.group)
    out, off = [], 0
    for c in chunks:
        n = c[0].numel()
        part = recv[:, off : off + n].view(c.shape)  # [P (source rank), B, Hx/P, Tl, D]
        off += n
        full = part.permute(1, 2, 0, 3, 4).flatten(2, 3)  # rank-order concatenation of the shards
        out.append(_to_global(full, plan).contiguous())
    return out


def _heads_to_seq(xs: list[Tensor], plan: _Plan) -> list[Tensor]:
    """Inverse of _seq_to_heads: [B, Hx/P, T, D] head shards → [B, Hx, T_local, D]; one all_to_all."""
    P, Tl = plan.info.size, plan.lengths[plan.info.rank]
    parts = [_to_rank_order(x, plan).unflatten(2, (P, Tl)).permute(2, 0, 1, 3, 4).contiguous() for x in xs]
    send = torch.cat([c.flatten(1) for c in parts], dim=1)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=plan.info.group)
    out, off = [], 0
    for c in parts:
        n = c[0].numel()
        part = recv[:, off : off + n].view(c.shape)  # [P (head group), B, Hx/P, Tl, D]
        off += n
        out.append(part.transpose(0, 1).flatten(1, 2).contiguous())
    return out


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, *xs):
        ctx.plan = plan
        return tuple(_seq_to_heads(list(xs), plan))

    @staticmethod
    def backward(ctx, *grads):
        return (None,) + tuple(_heads_to_seq([g.contiguous() for g in grads], ctx.plan))


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, x):
        ctx.plan = plan
        return _heads_to_seq([x], plan)[0]

    @staticmethod
    def backward(ctx, g):
        return None, _seq_to_heads([g.contiguous()], ctx.plan)[0]


def _all_to_all_attention(q, k, v, plan: _Plan) -> Tensor:
    from ..ops.softplus_attention import softplus_attention as single

    qh, kh, vh = _SeqToHeads.apply(plan, q, k, v)
    o = single(
        qh,
        kh,
        vh,
        causal=plan.causal,
        reweight_p=plan.p if plan.p > 0 else None,
        qk_norm=plan.qk_norm,
        cu_seqlens_q=plan.cu,
        cu_seqlens_k=plan.cu,
        backend=plan.backend,
    )
    return _HeadsToSeq.apply(plan, o)


# ------------------------------------------------------------------------------ ring
def _ring(plan: _Plan, own: Tensor, step) -> None:
    """Pass ``own`` ([.., T_local, D] block) around the ring: step(block, src) for src = rank, rank−1, ...

    The next block is in flight (batched isend/irecv) while ``step`` computes on the current one.
    """
    P, r, g = plan.info.size, plan.info.rank, plan.info.group
    cur = own
    for s in range(P):
        src = (r - s) % P
        reqs = []
        if s < P - 1:
            nxt_src = (src - 1) % P
            nxt = own.new_empty(own.shape[:-2] + (plan.lengths[nxt_src], own.shape[-1]))
            reqs = dist.batch_isend_irecv(
                [dist.P2POp(dist.isend, cur, (r + 1) % P, g), dist.P2POp(dist.irecv, nxt, (r - 1) % P, g)]
            )
        step(cur, src)
        for req in reqs:
            req.wait()
        if s < P - 1:
            cur = nxt


def _ring_forward(q, k, v, plan: _Plan):
    rank = plan.info.rank
    qp = plan.pieces(rank)
    reweight = plan.p > 0
    U, st = _blocks.new_forward_state(q)
    kv = torch.stack((k, v)).contiguous()

    def lssa_or_pass2(blk, src, stats_in=None):
        _blocks.block_forward(
            plan.backend,
            q,
            qp,
            blk[0],
            blk[1],
            plan.pieces(src),
            plan.segs,
            plan.causal,
            plan.p,
            plan.qk_norm,
            U,
            st,
            stats_in,
        )

    if not reweight:
        _ring(plan, kv, lssa_or_pass2)
        st[1].zero_()
        st[2].zero_()
        return _blocks.finish_forward(U, st, False, q.dtype), st
    # LSSAR: K alone around the ring for each row's global Σ_j softplus(s_ij) and max_j s_ij ...
    kk = k.contiguous()
    _ring(
        plan,
        kk,
        lambda blk, src: _blocks.block_forward(
            plan.backend, q, qp, blk, blk, plan.pieces(src), plan.segs, plan.causal, plan.p, plan.qk_norm, U, st
        ),
    )
    n = _blocks.row_lengths(qp, plan.segs, plan.causal, q.device)
    L = st[0].clone()
    stats_in = torch.stack((L, _blocks.lssar_base_max(st[1], L, n), torch.zeros_like(L)))
    # ... then K and V with those statistics: Σ_j t_ij^p v_j and Σ_j t_ij^p
    st.copy_(stats_in)
    _ring(plan, kv, lambda blk, src: lssa_or_pass2(blk, src, stats_in))
    return _blocks.finish_forward(U, st, True, q.dtype), st


def _ring_backward(q, k, v, o, do, st, plan: _Plan):
    P, rank, g = plan.info.size, plan.info.rank, plan.info.group
    qp = plan.pieces(rank)
    acc = _ref.acc_dtype(q.dtype)
    kv = torch.stack((k, v)).contiguous()
    gamma = None
    if plan.p > 0:  # Γ_i = Σ_j dbase_ij w_ij / L_i over all keys: a K/V pass of its own
        G = torch.zeros(q.shape[:-1], dtype=acc, device=q.device)
        _ring(
            plan,
            kv,
            lambda blk, src: _blocks.block_gamma(
                plan.backend,
                q,
                qp,
                blk[0],
                blk[1],
                plan.pieces(src),
                plan.segs,
                plan.causal,
                plan.p,
                plan.qk_norm,
                o,
                do,
                st,
                G,
            ),
        )
        gamma = torch.where(st[0] > 0, G / torch.where(st[0] > 0, st[0], torch.ones_like(G)), torch.zeros_like(G))
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    # dK/dV of the block in hand travel with it: each rank adds its rows' share and passes it on;
    # after P hops the sums arrive at the block's owner.
    holder = {"d": None}

    def step(blk, src):
        d = torch.zeros(blk.shape, dtype=acc, device=blk.device) if holder["d"] is None else holder["d"]
        _blocks.block_backward(
            plan.backend,
            q,
            qp,
            blk[0],
            blk[1],
            plan.pieces(src),
            plan.segs,
            plan.causal,
            plan.p,
            plan.qk_norm,
            o,
            do,
            st,
            gamma,
            dq,
            d[0],
            d[1],
        )
        prev = (src - 1) % P
        nxt = d.new_empty(d.shape[:-2] + (plan.lengths[prev], d.shape[-1]))
        if P > 1:
            # tag 1: told apart from the K/V block of the next step, in flight on the same pair
            for req in dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, d, (rank + 1) % P, g, tag=1),
                    dist.P2POp(dist.irecv, nxt, (rank - 1) % P, g, tag=1),
                ]
            ):
                req.wait()
            holder["d"] = nxt
        else:
            holder["d"] = d

    _ring(plan, kv, step)
    dkv = holder["d"]  # this rank's own block, with every rank's share
    dk, dv = dkv[0], dkv[1]
    if plan.qk_norm:
        dq, dk = _ref.norm_backward(q, dq), _ref.norm_backward(k, dk.contiguous())
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, st = _ring_forward(q, k, v, plan)
        ctx.save_for_backward(q, k, v, o, st)
        ctx.plan = plan
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, st = ctx.saved_tensors
        dq, dk, dv = _ring_backward(q, k, v, o, do.contiguous(), st, ctx.plan)
        return dq, dk, dv, None
