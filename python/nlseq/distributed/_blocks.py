"""Blockwise softplus attention: one rank's query pieces against one block of keys (docs/context_parallel.md).

The ring strategy of ``nlseq.distributed.softplus_attention`` and the single-process tests of the
partial kernels share these helpers. A *piece* is ``(start, stop, offset)``: global positions
``[start, stop)`` held at local rows ``[offset, offset + stop − start)``; a *segment* is one packed
sequence ``(start, stop)`` of the global sequence (``[(0, T)]`` without cu_seqlens). For every
(query piece, key piece, segment) triple with visible keys, the partial launchers of
``nlseq.ops.softplus_attention`` run with

    kv_offset = first query position − first key position     (signed; causal mask j <= i + kv_offset)
    n_offset  = first query position − segment start          (causal: N_i = n_offset + i + 1)
              = segment length                                 (non-causal: N_i = n_offset)

and their unnormalised outputs and row sums merge by addition (the row max of s by max).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..ops import softplus_attention as _ops
from ..reference import softplus_attention as _ref

Piece = tuple[int, int, int]
Segment = tuple[int, int]


def pieces_of(bounds: Sequence[tuple[int, int]]) -> list[Piece]:
    """(start, stop) global pieces in local order → (start, stop, local offset), empty pieces dropped."""
    out, off = [], 0
    for a, b in bounds:
        if b > a:
            out.append((a, b, off))
        off += b - a
    return out


def _triples(qpieces, kpieces, segs, causal):
    """(q rows [qa, qb), keys [ka, kb), segment) global bounds of every pair that has a visible key."""
    for qa0, qb0, qo in qpieces:
        for ka0, kb0, ko in kpieces:
            for s, e in segs:
                qa, qb, ka, kb = max(qa0, s), min(qb0, e), max(ka0, s), min(kb0, e)
                if qa >= qb or ka >= kb or (causal and ka > qb - 1):
                    continue
                yield (qa, qb, qa - qa0 + qo), (ka, kb, ka - ka0 + ko), (s, e)


def _call_args(q_rows, k_rows, seg, causal):
    (qa, _, _), (ka, _, _), (s, e) = q_rows, k_rows, seg
    return (qa - ka if causal else 0), (qa - s if causal else e - s)


def _sl(x: Tensor, a: int, n: int) -> Tensor:
    """Rows [a, a + n) of [.., T, D]."""
    return x.narrow(-2, a, n).contiguous()


def _rows(x: Tensor, a: int, n: int) -> Tensor:
    """Rows [a, a + n) of per-row values [.., T] (stats, Γ)."""
    return x.narrow(-1, a, n).contiguous()


def new_forward_state(q: Tensor) -> tuple[Tensor, Tensor]:
    """Zeroed (U [B, H, T, D], stats [3, B, H, T] = (Σw or R sums, row max of s = −inf, R)), accumulation dtype."""
    acc = _ref.acc_dtype(q.dtype)
    U = torch.zeros(q.shape, dtype=acc, device=q.device)
    st = torch.zeros((3,) + q.shape[:-1], dtype=acc, device=q.device)
    st[1].fill_(-math.inf)
    return U, st


def block_forward(
    backend: str,
    q: Tensor,
    qpieces,
    k: Tensor,
    v: Tensor,
    kpieces,
    segs,
    causal: bool,
    p: float,
    qk_norm: bool,
    U: Tensor,
    st: Tensor,
    stats_in: Optional[Tensor] = None,
) -> None:
    """Add one key block's partials into (U, st) in place (see reference partial_fwd for what they hold).

    LSSA / LSSAR statistics pass (stats_in None): st = (ΣL, max m, ·). LSSAR pass 2 (stats_in the
    global (L, M, ·) of every local row): st[2] += Σ t^p, U += Σ t^p v.
    """
    fwd = _ops.PARTIAL_FWD[backend]
    for qr, kr, seg in _triples(qpieces, kpieces, segs, causal):
        kv_offset, n_offset = _call_args(qr, kr, seg, causal)
        (qa, qb, qo), (ka, kb, ko) = qr, kr
        nq, nk = qb - qa, kb - ka
        sin = None if stats_in is None else _rows(stats_in, qo, nq)
        u, s = fwd(_sl(q, qo, nq), _sl(k, ko, nk), _sl(v, ko, nk), qk_norm, causal, p, kv_offset, n_offset, sin)
        U.narrow(-2, qo, nq).add_(u)
        rows = st.narrow(-1, qo, nq)
        if stats_in is None:
            rows[0].add_(s[0])
            torch.maximum(rows[1], s[1], out=rows[1])
        else:
            rows[2].add_(s[2])


def row_lengths(qpieces, segs, causal: bool, device) -> Tensor:
    """Global N_i of every local row, int64 [T_local]."""
    T = sum(b - a for a, b, _ in qpieces)
    n = torch.zeros(T, dtype=torch.int64, device=device)
    for qa0, qb0, qo in qpieces:
        for s, e in segs:
            qa, qb = max(qa0, s), min(qb0, e)
            if qa < qb:
                pos = torch.arange(qa, qb, device=device)
                n[qa - qa0 + qo : qb - qa0 + qo] = (pos - s + 1) if causal else (e - s)
    return n


def lssar_base_max(m: Tensor, L: Tensor, n: Tensor) -> Tensor:
    """M_i = N_i softplus(max_j s_ij) / L_i − O_i, 0 for an all-zero row (as nlseq/softplus_attention.h)."""
    nf = n.to(L.dtype)
    M = nf * _ref.softplus(m) / torch.where(L > 0, L, torch.ones_like(L)) - _ref.reweight_offset(n, L.dtype)
    return torch.where((M > _ref.ZERO_ROW_TOL) & (L > 0), M, torch.zeros_like(M))


def finish_forward(U: Tensor, stats: Tensor, reweight: bool, dtype) -> Tensor:
    """o = U / L (LSSA) or U / R (LSSAR), 0 for all-zero rows, in ``dtype``."""
    L, M, R = stats
    denom = R if reweight else L
    ok = (denom > 0) & (M > 0) if reweight else denom > 0
    inv = torch.where(ok, 1.0 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    return (U * inv[..., None]).to(dtype)


def block_gamma(backend: str, q, qpieces, k, v, kpieces, segs, causal, p, qk_norm, o, do, stats, G: Tensor) -> None:
    """Add one key block's Σ_j dbase_ij w_ij into G [B, H, T_local] (LSSAR backward)."""
    fn = _ops.PARTIAL_GAMMA[backend]
    for qr, kr, seg in _triples(qpieces, kpieces, segs, causal):
        kv_offset, n_offset = _call_args(qr, kr, seg, causal)
        (qa, qb, qo), (ka, kb, ko) = qr, kr
        nq, nk = qb - qa, kb - ka
        g = fn(
            _sl(q, qo, nq),
            _sl(k, ko, nk),
            _sl(v, ko, nk),
            qk_norm,
            _sl(o, qo, nq),
            _sl(do, qo, nq),
            _rows(stats, qo, nq),
            causal,
            p,
            kv_offset,
            n_offset,
        )
        G.narrow(-1, qo, nq).add_(g)


def block_backward(
    backend: str,
    q,
    qpieces,
    k,
    v,
    kpieces,
    segs,
    causal,
    p,
    qk_norm,
    o,
    do,
    stats,
    gamma: Optional[Tensor],
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
) -> None:
    """Add one key block's dq̂ share into dq and its keys' dk̂, dv (from these rows) into dk, dv."""
    fn = _ops.PARTIAL_BWD[backend]
    for qr, kr, seg in _triples(qpieces, kpieces, segs, causal):
        kv_offset, n_offset = _call_args(qr, kr, seg, causal)
        (qa, qb, qo), (ka, kb, ko) = qr, kr
        nq, nk = qb - qa, kb - ka
        g = None if gamma is None else _rows(gamma, qo, nq)
        a, b, c = fn(
            _sl(q, qo, nq),
            _sl(k, ko, nk),
            _sl(v, ko, nk),
            qk_norm,
            _sl(o, qo, nq),
            _sl(do, qo, nq),
            _rows(stats, qo, nq),
            causal,
            p,
            kv_offset,
            n_offset,
            g,
        )
        dq.narrow(-2, qo, nq).add_(a)
        dk.narrow(-2, ko, nk).add_(b)
        dv.narrow(-2, ko, nk).add_(c)


def blockwise_attention(
    backend: str, q: Tensor, k: Tensor, v: Tensor, qblocks, kblocks, segs, causal: bool, p: float, qk_norm: bool
):
    """Single process: the forward as the ring computes it, with the queries cut into ``qblocks``
    and the keys into ``kblocks`` (lists of (start, stop) bound lists, one list per simulated rank).
    Returns (o, stats); the tests compare it with the single-device op."""
    U, st = new_forward_state(q)
    qp = [(a, b, a) for blk in qblocks for a, b in blk if b > a]  # q is the full tensor: offset = start
    reweight = p > 0
    for blk in kblocks:
        kp = [(a, b, a) for a, b in blk if b > a]
        block_forward(backend, q, qp, k, v, kp, segs, causal, p, qk_norm, U, st)
    if reweight:
        n = row_lengths(qp, segs, causal, q.device)
        L, M = st[0].clone(), lssar_base_max(st[1], st[0], n)
        stats_in = torch.stack((L, M, torch.zeros_like(L)))
        U, st = new_forward_state(q)
        st.copy_(stats_in)
        for blk in kblocks:
            kp = [(a, b, a) for a, b in blk if b > a]
            block_forward(backend, q, qp, k, v, kp, segs, causal, p, qk_norm, U, st, stats_in)
    else:
        st[1].zero_()
        st[2].zero_()
    return finish_forward(U, st, reweight, q.dtype), st
