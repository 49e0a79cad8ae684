"""Triton kernels of one key block of softplus attention (LSSA / LSSAR) for context parallelism.

The ring strategy of ``nlseq.distributed.softplus_attention`` (docs/context_parallel.md) runs every
(query piece, key block) pair through three launchers whose contract is the reference functions
``partial_fwd``, ``partial_bwd`` and ``partial_bwd_gamma`` of
python/nlseq/reference/softplus_attention.py (docs/spec.md §2):

    s_ij = c_i rq_i rk_j (q_i·k_j),  c_i = ln D · ln N_i,  N_i global (n_offset) when n_offset >= 0
    mask: j < Tk and (causal: j <= i + kv_offset, kv_offset signed)
    fwd    LSSA / LSSAR statistics pass: U = Σ w v (LSSA only), stats = (Σ softplus(s), max s, 0)
           LSSAR pass 2 with the global (L, M): U = Σ t^p v, stats = (L, M, Σ t^p),
           t = ReLU(N w / L − O) / M
    bwd    dq̂ (this block's share), dk̂ and dv of the block's keys, with the global o, stats, Γ
    gamma  Σ_j dbase_ij w_ij of this block (LSSAR), Γ_i = (Σ over blocks) / L_i

Tiling is simple on purpose (correct first): one program per (batch·head, BM query rows) loops
over all key blocks (forward, dq̂, Γ); one program per (batch·kv head, BN keys) loops over the G
query heads of its group and all query blocks (dk̂, dv), so nothing is accumulated with atomics and
the result is deterministic. Everything is computed in float32 (IEEE dots; low-precision inputs are
converted on load). A faster version would skip key blocks beyond the causal diagonal, keep the
q·k and P·v products in the input dtype on the tensor cores, pipeline the loads and fuse the Γ
pass into the backward of the last block; none of this is tuned on a GPU yet.

This file is self-contained (its own small helpers): it does not share code with
kernels/softplus_attention.py. Only ``tl.*`` math is used, so it runs under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..registry import triton_interpret
from ._autotune import tuned

OP = "softplus_attention (ring partial, triton)"
MAX_D = 256


def _configs():
    if triton_interpret():
        return [triton.Config({"BM": 16, "BN": 16}, num_warps=1, num_stages=1)]
    # Every dot here is IEEE float32, which sm_90 runs as unrolled FMAs (no tensor cores), so the tiles
    # are the small ones without spills at D <= 128 on sm_90 (benchmarks/sass_report.py, checked by
    # tests/test_sass_report.py; the earlier 64x64 .. 16x32 tiles with 2 or 4 warps all spilled,
    # up to 110 KB at D = 128). Untimed: which of them is fastest needs a GPU.
    return tuned(
        [
            triton.Config({"BM": BM, "BN": BN}, num_warps=w, num_stages=s)
            for BM, BN, w, s in [(32, 16, 8, 1), (16, 32, 8, 1), (16, 16, 4, 1)]
        ]
    )


# ------------------------------------------------------------------------------ helpers
@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|); log1p(u) = log(1 + u) · u / ((1 + u) − 1) keeps
    # full relative accuracy for small u (softplus(x) ≈ e^x for x << 0)
    u = tl.exp(-tl.abs(x))
    v = 1.0 + u
    d = v - 1.0
    l1p = tl.where(d == 0.0, u, tl.log(v) * (u / tl.where(d == 0.0, 1.0, d)))
    return tl.maximum(x, 0.0) + l1p


@triton.jit
def _pow(t, e):
    """t^e for t > 0, 0 for t <= 0 (e > 0; e = 0 gives 1 on t > 0)."""
    pos = t > 0.0
    return tl.where(pos, tl.exp(e * tl.log(tl.where(pos, t, 1.0))), 0.0)


@triton.jit
def _rows(offs_m, Tq, Tk, kv_offset, n_offset, logD, CAUSAL: tl.constexpr):
    """(N_i as float, c_i = ln D · ln N_i, O_i) of the rows offs_m (reference ``visible``)."""
    if CAUSAL:
        n = tl.minimum(tl.maximum(offs_m + 1 + kv_offset, 0), Tk)
    else:
        n = tl.zeros_like(offs_m) + Tk
    if n_offset >= 0:
        if CAUSAL:
            n = n_offset + offs_m + 1
        else:
            n = tl.zeros_like(offs_m) + n_offset
    nf = n.to(tl.float32)
    c = logD * tl.log(tl.maximum(nf, 1.0))
    o = tl.where(nf > 3.0, 1.0, 0.0)
    return nf, c, o


@triton.jit
def _scores(b_q, b_k, b_cq, b_rk, offs_m, offs_n, Tq, Tk, kv_offset, CAUSAL: tl.constexpr):
    """(s [BM, BN] float32, visible mask); b_cq = c_i · rq_i."""
    s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * b_cq[:, None] * b_rk[None, :]
    mask = (offs_m[:, None] < Tq) & (offs_n[None, :] < Tk)
    if CAUSAL:
        mask = mask & (offs_n[None, :] <= offs_m[:, None] + kv_offset)
    return s, mask


@triton.jit
def _over_sum(s, L):
    """(softplus(s) / L, sigmoid(s) / L) with the stored L [BM] (reference ``over_sum``): e^(s − L) on
    shifted rows (L < 0), 0 on rows without keys (L = 0). Mask afterwards."""
    Lc = L[:, None]
    shifted = Lc < 0.0
    e = tl.exp(tl.minimum(tl.where(shifted, s - Lc, 0.0), 0.0))
    Lsafe = tl.where(Lc > 0.0, Lc, 1.0)
    a = tl.where(shifted, e, _softplus(s) / Lsafe)
    g = tl.where(shifted, e, (1.0 / (1.0 + tl.exp(-s))) / Lsafe)
    a = tl.where(Lc == 0.0, 0.0, a)
    g = tl.where(Lc == 0.0, 0.0, g)
    return a, g


@triton.jit
def _load_rows(ptr, offs, T, D, BD: tl.constexpr):
    offs_d = tl.arange(0, BD)
    m = (offs[:, None] < T) & (offs_d[None, :] < D)
    return tl.load(ptr + offs[:, None] * D + offs_d[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, x, offs, T, D, BD: tl.constexpr):
    offs_d = tl.arange(0, BD)
    m = (offs[:, None] < T) & (offs_d[None, :] < D)
    tl.store(ptr + offs[:, None] * D + offs_d[None, :], x, mask=m)


# ------------------------------------------------------------------------------ forward
@triton.autotune(configs=_configs(), key=["BD", "CAUSAL", "MODE"])
@triton.jit
def _partial_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    rq_ptr,
    rk_ptr,
    u_ptr,
    st_ptr,
    sin_ptr,
    H,
    G,
    Tq,
    Tk,
    D,
    BH,
    kv_offset,
    n_offset,
    logD,
    p,
    CAUSAL: tl.constexpr,
    MODE: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
):
    # MODE 0: LSSA (U = Σ w v); 1: LSSAR statistics pass (U = 0); 2: LSSAR pass 2 with stats_in
    pid_m, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # int64 offsets: B·H·T·D may pass 2^31
    b, h = bh // H, bh % H
    bkv = b * (H // G) + h // G
    offs_m = pid_m * BM + tl.arange(0, BM)
    row_ok = offs_m < Tq
    b_q = _load_rows(q_ptr + bh * Tq * D, offs_m, Tq, D, BD)
    b_rq = tl.load(rq_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
    nf, c, O = _rows(offs_m, Tq, Tk, kv_offset, n_offset, logD, CAUSAL)
    b_cq = c * b_rq
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    L = tl.zeros([BM], dtype=tl.float32)
    m = tl.full([BM], float("-inf"), dtype=tl.float32)
    R = tl.zeros([BM], dtype=tl.float32)
    M = tl.zeros([BM], dtype=tl.float32)
    if MODE == 2:
        L = tl.load(sin_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
        M = tl.load(sin_ptr + BH * Tq + bh * Tq + offs_m, mask=row_ok, other=0.0)
    Msafe = tl.where(M > 0.0, M, 1.0)
    bad = (L != L) | (M != M)  # NaN statistics in, NaN out (reference _nan_rows)
    for start in range(0, Tk, BN):
        offs_n = start + tl.arange(0, BN)
        b_k = _load_rows(k_ptr + bkv * Tk * D, offs_n, Tk, D, BD)
        b_rk = tl.load(rk_ptr + bkv * Tk + offs_n, mask=offs_n < Tk, other=0.0)
        s, mask = _scores(b_q, b_k, b_cq, b_rk, offs_m, offs_n, Tq, Tk, kv_offset, CAUSAL)
        if MODE == 2:
            a, _ = _over_sum(s, L)
            base = nf[:, None] * a - O[:, None]
            t = tl.where(mask & (M > 0.0)[:, None], tl.maximum(base, 0.0) / Msafe[:, None], 0.0)
            r = _pow(t, p)
            r = tl.where(bad[:, None], float("nan"), r)
            R += tl.sum(r, 1)
            b_v = _load_rows(v_ptr + bkv * Tk * D, offs_n, Tk, D, BD)
            acc += tl.dot(r, b_v, input_precision="ieee")
        else:
            # unshifted weights: the partials of one row from several blocks must share one scale
            w = tl.where(mask, _softplus(s), 0.0)
            L += tl.sum(w, 1)
            m = tl.maximum(m, tl.max(tl.where(mask, s, float("-inf")), 1))
            if MODE == 0:
                b_v = _load_rows(v_ptr + bkv * Tk * D, offs_n, Tk, D, BD)
                acc += tl.dot(w, b_v, input_precision="ieee")
    _store_rows(u_ptr + bh * Tq * D, acc, offs_m, Tq, D, BD)
    tl.store(st_ptr + bh * Tq + offs_m, L, mask=row_ok)
    if MODE == 2:
        tl.store(st_ptr + BH * Tq + bh * Tq + offs_m, M, mask=row_ok)
    else:
        tl.store(st_ptr + BH * Tq + bh * Tq + offs_m, m, mask=row_ok)
    tl.store(st_ptr + 2 * BH * Tq + bh * Tq + offs_m, R, mask=row_ok)


# ------------------------------------------------------------------------------ backward
@triton.jit
def _grad_tile(
    b_q,
    b_cq,
    b_k,
    b_rk,
    b_v,
    b_do,
    dl,
    L,
    M,
    R,
    gam,
    nf,
    c,
    O,
    offs_m,
    offs_n,
    Tq,
    Tk,
    kv_offset,
    p,
    CAUSAL: tl.constexpr,
    REWEIGHT: tl.constexpr,
):
    """(P, ds (with c_i, before rk/rq), dbase·a) of one [BM, BN] tile, reference _bwd_dense."""
    s, mask = _scores(b_q, b_k, b_cq, b_rk, offs_m, offs_n, Tq, Tk, kv_offset, CAUSAL)
    a, g = _over_sum(s, L)
    a = tl.where(mask, a, 0.0)
    g = tl.where(mask, g, 0.0)
    dP = tl.dot(b_do, tl.trans(b_v), input_precision="ieee")
    bad = (L != L) | (M != M)
    if REWEIGHT:
        Msafe = tl.where(M > 0.0, M, 1.0)[:, None]
        Rsafe = tl.where(R > 0.0, R, 1.0)[:, None]
        base = nf[:, None] * a - O[:, None]
        t = tl.where(mask & (base > 0.0) & (M > 0.0)[:, None], base / Msafe, 0.0)
        P = _pow(t, p) / Rsafe
        dbase = (dP - dl[:, None]) * p * _pow(t, p - 1.0) / (Msafe * Rsafe)
        dbase = tl.where(t > 0.0, dbase, 0.0)
        ga = dbase * a
        dsg = nf[:, None] * (dbase - gam[:, None])
    else:
        P = a
        ga = tl.zeros_like(a)
        dsg = dP - dl[:, None]
    P = tl.where(bad[:, None], float("nan"), P)
    ds = tl.where(mask, dsg * g, 0.0) * c[:, None]
    ds = tl.where(mask & bad[:, None], float("nan"), ds)
    return P, ds, ga


@triton.autotune(configs=_configs(), key=["BD", "CAUSAL", "REWEIGHT", "GAMMA"])
@triton.jit
def _partial_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    rq_ptr,
    rk_ptr,
    do_ptr,
    dl_ptr,
    st_ptr,
    gam_ptr,
    dq_ptr,
    H,
    G,
    Tq,
    Tk,
    D,
    BH,
    kv_offset,
    n_offset,
    logD,
    p,
    CAUSAL: tl.constexpr,
    REWEIGHT: tl.constexpr,
    GAMMA: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
):
    # GAMMA: write this block's Σ_j dbase_ij w_ij into gam_ptr instead of dq̂ (partial_bwd_gamma)
    pid_m, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # int64 offsets: B·H·T·D may pass 2^31
    b, h = bh // H, bh % H
    bkv = b * (H // G) + h // G
    offs_m = pid_m * BM + tl.arange(0, BM)
    row_ok = offs_m < Tq
    b_q = _load_rows(q_ptr + bh * Tq * D, offs_m, Tq, D, BD)
    b_do = _load_rows(do_ptr + bh * Tq * D, offs_m, Tq, D, BD)
    b_rq = tl.load(rq_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
    dl = tl.load(dl_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
    L = tl.load(st_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
    M = tl.load(st_ptr + BH * Tq + bh * Tq + offs_m, mask=row_ok, other=0.0)
    R = tl.load(st_ptr + 2 * BH * Tq + bh * Tq + offs_m, mask=row_ok, other=0.0)
    if REWEIGHT and not GAMMA:
        gam = tl.load(gam_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
    else:
        gam = tl.zeros([BM], dtype=tl.float32)
    nf, c, O = _rows(offs_m, Tq, Tk, kv_offset, n_offset, logD, CAUSAL)
    b_cq = c * b_rq
    dq = tl.zeros([BM, BD], dtype=tl.float32)
    gsum = tl.zeros([BM], dtype=tl.float32)
    for start in range(0, Tk, BN):
        offs_n = start + tl.arange(0, BN)
        b_k = _load_rows(k_ptr + bkv * Tk * D, offs_n, Tk, D, BD)
        b_v = _load_rows(v_ptr + bkv * Tk * D, offs_n, Tk, D, BD)
        b_rk = tl.load(rk_ptr + bkv * Tk + offs_n, mask=offs_n < Tk, other=0.0)
        _, ds, ga = _grad_tile(
            b_q,
            b_cq,
            b_k,
            b_rk,
            b_v,
            b_do,
            dl,
            L,
            M,
            R,
            gam,
            nf,
            c,
            O,
            offs_m,
            offs_n,
            Tq,
            Tk,
            kv_offset,
            p,
            CAUSAL,
            REWEIGHT,
        )
        if GAMMA:
            gsum += tl.sum(ga, 1)
        else:
            dq += tl.dot(ds * b_rk[None, :], b_k, input_precision="ieee")  # ds @ k̂
    if GAMMA:
        tl.store(gam_ptr + bh * Tq + offs_m, gsum * tl.where(L > 0.0, L, 0.0), mask=row_ok)
    else:
        _store_rows(dq_ptr + bh * Tq * D, dq, offs_m, Tq, D, BD)


@triton.autotune(configs=_configs(), key=["BD", "CAUSAL", "REWEIGHT"])
@triton.jit
def _partial_dkv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    rq_ptr,
    rk_ptr,
    do_ptr,
    dl_ptr,
    st_ptr,
    gam_ptr,
    dk_ptr,
    dv_ptr,
    H,
    G,
    Tq,
    Tk,
    D,
    BH,
    kv_offset,
    n_offset,
    logD,
    p,
    CAUSAL: tl.constexpr,
    REWEIGHT: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
):
    pid_n, bkv = tl.program_id(0), tl.program_id(1).to(tl.int64)
    Hkv = H // G
    b, hk = bkv // Hkv, bkv % Hkv
    offs_n = pid_n * BN + tl.arange(0, BN)
    b_k = _load_rows(k_ptr + bkv * Tk * D, offs_n, Tk, D, BD)
    b_v = _load_rows(v_ptr + bkv * Tk * D, offs_n, Tk, D, BD)
    b_rk = tl.load(rk_ptr + bkv * Tk + offs_n, mask=offs_n < Tk, other=0.0)
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dv = tl.zeros([BN, BD], dtype=tl.float32)
    for gi in range(0, G):
        bh = b * H + hk * G + gi
        for start in range(0, Tq, BM):
            offs_m = start + tl.arange(0, BM)
            row_ok = offs_m < Tq
            b_q = _load_rows(q_ptr + bh * Tq * D, offs_m, Tq, D, BD)
            b_do = _load_rows(do_ptr + bh * Tq * D, offs_m, Tq, D, BD)
            b_rq = tl.load(rq_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
            dl = tl.load(dl_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
            L = tl.load(st_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
            M = tl.load(st_ptr + BH * Tq + bh * Tq + offs_m, mask=row_ok, other=0.0)
            R = tl.load(st_ptr + 2 * BH * Tq + bh * Tq + offs_m, mask=row_ok, other=0.0)
            if REWEIGHT:
                gam = tl.load(gam_ptr + bh * Tq + offs_m, mask=row_ok, other=0.0)
            else:
                gam = tl.zeros([BM], dtype=tl.float32)
            nf, c, O = _rows(offs_m, Tq, Tk, kv_offset, n_offset, logD, CAUSAL)
            P, ds, _ = _grad_tile(
                b_q,
                c * b_rq,
                b_k,
                b_rk,
                b_v,
                b_do,
                dl,
                L,
                M,
                R,
                gam,
                nf,
                c,
                O,
                offs_m,
                offs_n,
                Tq,
                Tk,
                kv_offset,
                p,
                CAUSAL,
                REWEIGHT,
            )
            dv += tl.dot(tl.trans(P), b_do, input_precision="ieee")
            dk += tl.dot(tl.trans(ds * b_rq[:, None]), b_q, input_precision="ieee")  # dsᵀ @ q̂
    _store_rows(dk_ptr + bkv * Tk * D, dk, offs_n, Tk, D, BD)
    _store_rows(dv_ptr + bkv * Tk * D, dv, offs_n, Tk, D, BD)


# ------------------------------------------------------------------------------ launchers
def _check(q, k, v):
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(
            f"nlseq.{OP}: q, k, v must be float32, bfloat16 or float16 (float64 runs on backend='cpp' "
            f"or 'reference'), got {q.dtype}"
        )
    D = q.shape[-1]
    if D > MAX_D or D < 1:
        raise ValueError(f"nlseq.{OP}: the head dim D must be in [1, {MAX_D}], got {D}")


def _common(q, k):
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    BD = max(16, triton.next_power_of_2(D))
    return B, H, H // Hkv, Tq, Tk, D, BD, math.log(D)


def _c(x):
    return x.contiguous()


def partial_fwd(q, k, v, rq, rk, causal, p, kv_offset, n_offset, stats_in=None):
    """(U [B, H, Tq, D], stats [3, B, H, Tq]) float32: the reference ``partial_fwd`` (p <= 0: LSSA)."""
    _check(q, k, v)
    B, H, G, Tq, Tk, D, BD, logD = _common(q, k)
    U = torch.zeros(B, H, Tq, D, dtype=torch.float32, device=q.device)
    st = torch.zeros(3, B, H, Tq, dtype=torch.float32, device=q.device)
    reweight = p > 0
    mode = 0 if not reweight else (1 if stats_in is None else 2)
    if Tq == 0:
        return U, st
    sin = st if mode != 2 else _c(stats_in[:2].to(torch.float32))
    grid = lambda meta: (triton.cdiv(Tq, meta["BM"]), B * H)  # noqa: E731
    _partial_fwd_kernel[grid](
        _c(q),
        _c(k),
        _c(v),
        _c(rq.float()),
        _c(rk.float()),
        U,
        st,
        sin,
        H,
        G,
        Tq,
        Tk,
        D,
        B * H,
        int(kv_offset),
        int(n_offset),
        logD,
        float(max(p, 0.0)),
        CAUSAL=bool(causal),
        MODE=mode,
        BD=BD,
    )
    return U, st


def _delta(o, do):
    return (do.float() * o.float()).sum(-1).contiguous()


def partial_bwd(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, n_offset, gamma=None):
    """(dq̂ [B, H, Tq, D], dk̂, dv [B, Hkv, Tk, D]) float32: the reference ``partial_bwd``."""
    _check(q, k, v)
    reweight = p > 0
    if reweight and gamma is None:
        raise ValueError(f"nlseq.{OP}: partial_bwd of LSSAR needs the global gamma")
    B, H, G, Tq, Tk, D, BD, logD = _common(q, k)
    Hkv = H // G
    dq = torch.zeros(B, H, Tq, D, dtype=torch.float32, device=q.device)
    dk = torch.zeros(B, Hkv, Tk, D, dtype=torch.float32, device=q.device)
    dv = torch.zeros(B, Hkv, Tk, D, dtype=torch.float32, device=q.device)
    if Tq == 0 or Tk == 0:
        return dq, dk, dv
    st = _c(stats.to(torch.float32))
    gam = _c(gamma.to(torch.float32)) if reweight else st
    args = (_c(q), _c(k), _c(v), _c(rq.float()), _c(rk.float()), _c(do), _delta(o, do), st, gam)
    scal = (H, G, Tq, Tk, D, B * H, int(kv_offset), int(n_offset), logD, float(max(p, 0.0)))
    grid_q = lambda meta: (triton.cdiv(Tq, meta["BM"]), B * H)  # noqa: E731
    _partial_dq_kernel[grid_q](*args, dq, *scal, CAUSAL=bool(causal), REWEIGHT=reweight, GAMMA=False, BD=BD)
    grid_k = lambda meta: (triton.cdiv(Tk, meta["BN"]), B * Hkv)  # noqa: E731
    _partial_dkv_kernel[grid_k](*args, dk, dv, *scal, CAUSAL=bool(causal), REWEIGHT=reweight, BD=BD)
    return dq, dk, dv


def partial_bwd_gamma(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, n_offset):
    """This block's Σ_j dbase_ij w_ij [B, H, Tq] float32 (LSSAR): the reference ``partial_bwd_gamma``."""
    _check(q, k, v)
    B, H, G, Tq, Tk, D, BD, logD = _common(q, k)
    out = torch.zeros(B, H, Tq, dtype=torch.float32, device=q.device)
    if Tq == 0 or Tk == 0 or p <= 0:
        return out
    st = _c(stats.to(torch.float32))
    args = (_c(q), _c(k), _c(v), _c(rq.float()), _c(rk.float()), _c(do), _delta(o, do), st, out)
    scal = (H, G, Tq, Tk, D, B * H, int(kv_offset), int(n_offset), logD, float(p))
    grid_q = lambda meta: (triton.cdiv(Tq, meta["BM"]), B * H)  # noqa: E731
    _partial_dq_kernel[grid_q](*args, out, *scal, CAUSAL=bool(causal), REWEIGHT=True, GAMMA=True, BD=BD)
    return out
