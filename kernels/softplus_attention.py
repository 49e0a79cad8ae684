"""Triton kernels of softplus attention, LSSA and LSSAR (docs/spec.md §2), FlashAttention style.

Never forms the [Tq, Tk] matrix: each program owns a tile of BM query rows (forward, dq) or BN
keys (dk, dv) and streams the other side in tiles; the backward recomputes the scores.

    s_ij = c_i rq_i rk_j (q_i·k_j)      c_i = ln D · ln N_i, rq/rk = reciprocal QK norms
    LSSA   one pass, no running max: acc += softplus(s) v, L += softplus(s); rows whose sum is so
           small that all their scores may lie below SHIFT_BELOW (e.g. qk_norm=False) are redone
           by _fwd_shift_kernel (two passes: row max, then e^(s − max) weights; docs/numerics.md)
    LSSAR  two passes: (row max of s, L), then t = ReLU(N w / L − O) / M with M the row's largest
           base (from the max), acc += t^p v, R += t^p: every term is <= 1, nothing overflows.

The raw q·k product runs on the tensor cores in the input dtype (fp32 inputs use IEEE fp32 dots,
not TF32); the QK-norm and the length scale are applied to the fp32 scores, so low-precision
inputs are not rounded again after normalisation. Head dims are padded to the next power of two
(BD >= 16) with masks, so any D works (32..256 are the tuned range). Under TRITON_INTERPRET=1
there is a single small config and no libdevice (tl.exp/tl.log only).

Launchers: ``softplus_attention_fwd`` and ``softplus_attention_bwd`` follow the contract of
python/nlseq/ops/softplus_attention.py.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..reference.softplus_attention import SHIFT_BELOW, ZERO_ROW_TOL
from ..registry import triton_interpret
from ._autotune import tuned

_INTERPRETER_CONFIG = triton.Config({"BM": 16, "BN": 16}, num_warps=1, num_stages=1)


def _tiles(tiles):
    """Autotune configs of (BM, BN, warps, stages) tiles; under the interpreter its single small config."""
    if triton_interpret():
        return [_INTERPRETER_CONFIG]
    return tuned([triton.Config({"BM": BM, "BN": BN}, num_warps=w, num_stages=s) for BM, BN, w, s in tiles])


# The config lists, per DOT_PREC: "tf32" (16-bit inputs; their dots run on the tensor cores in the
# input dtype) and "ieee" (float32 inputs). Each autotuned kernel holds both lists and
# _for_precision keeps the launch's own (the autotune key holds the input dtype, so each gets its
# best). Every config is spill-free at D <= 128 on sm_90 (benchmarks/sass_report.py, checked by
# tests/test_sass_report.py); which of them is fastest is still to be timed on a GPU.
#
# 16-bit: 128x64 tiles with 8 warps at D = 128; smaller ones for D = 256 and short sequences (configs
# that do not fit the shared memory are skipped by the autotuner). 128x64 with 4 warps, 128x128,
# 128x32 and 64x128 spilled.
# float32: an IEEE float32 tl.dot is not a tensor-core instruction on sm_90; Triton unrolls it into
# FMAs on operands it loads from shared memory into registers (each thread: its rows and columns of
# the whole reduction dim), and ptxas keeps many of them live: every 16-bit forward tile spilled in
# float32 at D = 128 (0.6 to 61 KB of spill loads), as did every 64-row tile tried (8 or 16 warps) and
# 32x128. What fits: 16 or 32 rows with 2 to 8 scores per thread. It costs ~370-430 SASS
# instructions per score forward at D = 128 (the two dots alone are 2·D FMAs per score) against ~20
# for bf16 (docs/compiled_code.md). Checked spill-free at D = 16, 32, 64 and 128.
_FWD = {
    "tf32": _tiles([(128, 64, 8, 3), (64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (32, 32, 4, 1)]),
    "ieee": _tiles([(32, 64, 8, 2), (32, 32, 16, 1), (32, 16, 8, 1), (16, 16, 4, 1)]),
}
# The fused backward holds dk and dv accumulators and issues dq's atomic adds per element: at D = 128
# every 16-bit tile of 64 query rows spilled, so 32-row tiles for now. float32 (k, v reloaded per
# query tile, see _bwd_kernel): 32x32 with 8 warps, 16x64 with 8 or 16 warps spilled.
_BWD = {
    "tf32": _tiles([(32, 64, 8, 1), (32, 32, 4, 1)]),
    "ieee": _tiles([(32, 32, 16, 1), (16, 32, 8, 1), (16, 16, 4, 1)]),
}
# _fwd_shift_kernel (one launch config, no autotuning): 32x32 with 4 warps has no spill for
# bf16/fp16 up to D = 256; float32 spilled at D = 128 with it (and 16x16 with 2 warps), 16x16 with
# 4 warps does not.
_SHIFT = {
    "tf32": dict(BM=32, BN=32, num_warps=4, num_stages=1),
    "ieee": dict(BM=16, BN=16, num_warps=4, num_stages=1),
}


def _both(table):
    return table["tf32"] + [c for c in table["ieee"] if c not in table["tf32"]]


def _configs(prec=None):
    """_fwd_kernel's configs for DOT_PREC ``prec``, or (None) every one: the 16-bit list, then float32's."""
    return _both(_FWD) if prec is None else _FWD[prec]


def _bwd_configs(prec=None):
    """The backward kernels' configs (_bwd_kernel, _bwd_gamma_kernel), as :func:`_configs`."""
    return _both(_BWD) if prec is None else _BWD[prec]


def _shift_config(prec):
    """_fwd_shift_kernel's launch config: BM, BN, num_warps, num_stages (one BM×BN tile, BM = BN)."""
    if triton_interpret():
        return dict(BM=16, BN=16, num_warps=1, num_stages=1)
    return _SHIFT[prec]


def _for_precision(table):
    """An early_config_prune that keeps the configs of the launch's DOT_PREC (triton.Config compares
    by value: a tile in both lists is held once and kept for both)."""

    def prune(configs, named_args, **kwargs):
        own = table["ieee" if kwargs["DOT_PREC"] == "ieee" else "tf32"]
        return [c for c in configs if c in own]

    return prune


_KEY = ["BD", "CAUSAL", "REWEIGHT", "IS_VARLEN", "DOT_PREC"]


# On the GPU the per-score math uses the SFU: ex2.approx (what tl.exp compiles to anyway), and, for
# 16-bit inputs, lg2.approx·ln2 for the log of softplus (CUDA's __logf: absolute error <= 2^-21.41
# for x in [0.5, 2]; the log is only taken of 1 + e, e in (0, 1]) and rcp.approx for 1/(1 + e):
# the accurate libdevice log is ~20 instructions and an IEEE division ~10 plus a slow-path call, per
# score. That error is far below bf16/fp16 rounding; float32 inputs keep the accurate log (the
# fast one would exceed 2x PyTorch's own float32 error, see docs/compiled_code.md).
# Under TRITON_INTERPRET=1 there is no inline PTX: tl.log and a true division instead; float64
# inputs (whose scores are float64) keep the accurate functions everywhere.
_FAST_MATH = tl.constexpr(not triton_interpret())
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _log(x):
    """ln x: lg2.approx · ln 2 on the GPU, tl.log under the interpreter."""
    if _FAST_MATH and x.dtype == tl.float32:
        lg2 = tl.inline_asm_elementwise(
            "lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
        return lg2 * _LN2
    else:
        return tl.log(x)


@triton.jit
def _exp2(x):
    """2^x: ex2.approx.ftz.f32 on the GPU (no denormal fix-up: results below 2^-126 flush to 0, which
    only happens for |s| > 87, where e only ever adds to 1), tl.exp2 under the interpreter."""
    if _FAST_MATH and x.dtype == tl.float32:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp2(x)


@triton.jit
def _rcp(x):
    """1 / x: rcp.approx.f32 (at most 1 ulp) on the GPU, a division under the interpreter."""
    if _FAST_MATH and x.dtype == tl.float32:
        return tl.inline_asm_elementwise("rcp.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def _softplus_e(s, FAST: tl.constexpr):
    """(softplus(s), e = exp(−|s|)), no division. e is returned so the backward's sigmoid reuses it
    (σ(s) = 1/(1 + e) for s >= 0, e/(1 + e) below). FAST (16-bit inputs): log1p(e) as the SFU's
    ln(1 + e); else (float32 inputs) the accurate log plus the rounding error of 1 + e, which makes
    it log1p to ~1 ulp (docs/compiled_code.md: why float32 keeps it)."""
    e = _exp2(tl.abs(s) * -1.4426950408889634)
    return _softplus_of_e(s, e, FAST), e


@triton.jit
def _softplus_of_e(s, e, FAST: tl.constexpr):
    """softplus(s) from e = exp(−|s|)."""
    t = 1.0 + e
    if FAST:
        l1p = _log(t)
    else:
        l1p = tl.log(t) + (e - (t - 1.0)) * _rcp(t)
    return tl.maximum(s, 0.0) + l1p


@triton.jit
def _softplus(x, FAST: tl.constexpr):
    return _softplus_e(x, FAST)[0]


# -- underflow-safe rows (issue 12, docs/numerics.md; the reference's row_shift / shifted_weights /
# stored_sum / over_sum): a row whose largest visible score m lies below SHIFT_BELOW uses the
# weights e^(s − m) instead of softplus(s) (equal up to a factor e^m and ~1e-18 relative, but
# softplus(s) underflows to 0 in float32 for s < −87), and stores L = ln(row sum) + m < 0, so the
# backward reads w / L and σ(s) / L as e^(s − L) there without any other statistic.
# Ordinary rows pay one select per score: exp's argument −|s| gets a per-row constant
# (k = −shift·log2 e, 0 on ordinary rows) in the same FMA, which gives e = e^(s − shift) on a
# shifted row (every visible s < 0 there); the weight is then e itself instead of softplus(s).
# Everything else (the shift, the rescale factor, ln of the sum) is per row.
_SHIFT_BELOW = tl.constexpr(SHIFT_BELOW)
# LSSA flags a row for _fwd_shift_kernel when L < N·_REDO_BELOW: 2·softplus(SHIFT_BELOW) (> N·softplus(m)
# >= L for every row with max m < SHIFT_BELOW, with room for rounding). It also catches rows whose
# 16-bit-input fast log flushed every weight to 0 (all scores below ~−17), which it redoes accurately.
_REDO_BELOW = tl.constexpr(2.0 * math.exp(SHIFT_BELOW))


@triton.jit
def _weight_e(s, k_row, sh_row, FAST: tl.constexpr):
    """(w, e) for a [BM, BN] tile: e = exp(−|s| + k_row·ln 2), w = softplus(s) on ordinary rows and
    e on shifted rows (sh_row). Scores set to −inf (invisible keys) give w = e = 0."""
    e = _exp2(tl.abs(s) * -1.4426950408889634 + k_row[:, None])
    return tl.where(sh_row[:, None], e, _softplus_of_e(s, e, FAST)), e


@triton.jit
def _online_shift(b_s, b_mx, b_sh):
    """Running row max over the masked scores b_s (invisible = −inf): (max, shift = max where it is
    finite and < SHIFT_BELOW else 0, factor e^(old shift − new shift) (<= 1) that rescales what
    was summed under the old shift). The shift only moves up; from the initial 0 (no key seen yet)
    to a first shift the factor is 1 (nothing summed)."""
    mx = tl.maximum(b_mx, tl.max(b_s, 1))
    sh = tl.where((mx < _SHIFT_BELOW) & (mx > float("-inf")), mx, 0.0)
    f = tl.exp(tl.minimum(b_sh - sh, 0.0))
    return mx, sh, f


@triton.jit
def _stored_sum(sum_, sh):
    """L as stored: the row sum, or ln(row sum) + shift (< 0) on shifted rows."""
    return tl.where(sh < 0.0, tl.log(tl.where(sh < 0.0, sum_, 1.0)) + sh, sum_)


@triton.jit
def _inv_sum(L):
    """Per row, the factor that turns the per-score weight of _weight_e into w / L: 1/L on ordinary
    rows, 1 on shifted rows (the weight e^(s − L) is already divided), 0 on rows without keys, NaN
    on NaN rows (a NaN score the row sees: NaN in, NaN out)."""
    r = tl.where(L > 0.0, 1.0 / tl.where(L > 0.0, L, 1.0), tl.where(L < 0.0, 1.0, 0.0))
    return tl.where(L != L, L, r)


@triton.jit
def _exp_shift(L):
    """k_row of _weight_e from the stored L: −L·log2 e on shifted rows (L < 0), else 0."""
    return tl.where(L < 0.0, L * -1.4426950408889634, 0.0)


@triton.jit
def _pow_int(t, P: tl.constexpr):
    """t^P for a compile-time integer 1 <= P < 64, by squaring (t^15: six multiplies)."""
    r = t * 0.0 + 1.0
    b = t
    for i in tl.static_range(6):
        if (P >> i) & 1:
            r = r * b
        if (P >> (i + 1)) != 0:
            b = b * b
    return r


@triton.jit
def _pow(t, p, P_INT: tl.constexpr):
    """t^p for t >= 0 (0 at t = 0, p > 0): by multiplies when p is the integer P_INT, else exp2(p log2 t)."""
    if P_INT > 0:
        return _pow_int(t, P_INT)
    else:
        return tl.where(t > 0.0, tl.exp2(p * (_log(tl.where(t > 0.0, t, 1.0)) * 1.4426950408889634)), 0.0)


@triton.jit
def _lssar_weight(w, a_i, b_i, p, P_INT: tl.constexpr):
    """LSSAR's t^p from the softplus weight w: t = ReLU(N w / L − O) / M = ReLU(w a_i − b_i) with the
    per-row a_i = N / (L M), b_i = O / M (one FMA per score)."""
    t = tl.maximum(w * a_i[:, None] - b_i[:, None], 0.0)
    return _pow(t, p, P_INT), t


@triton.jit
def _sequence(i_z, cu_q, cu_k, Tq, Tk, IS_VARLEN: tl.constexpr):
    """(batch index, first query row, query count, first key row, key count) of sequence i_z."""
    if IS_VARLEN:
        q0 = tl.load(cu_q + i_z).to(tl.int64)
        nq = tl.load(cu_q + i_z + 1).to(tl.int64) - q0
        k0 = tl.load(cu_k + i_z).to(tl.int64)
        nk = tl.load(cu_k + i_z + 1).to(tl.int64) - k0
        b = i_z * 0
    else:
        q0 = i_z * 0
        nq = Tq + q0
        k0 = q0
        nk = Tk + q0
        b = i_z
    return b, q0, nq, k0, nk


@triton.jit
def _visible(o_m, nk, kv_offset, CAUSAL: tl.constexpr):
    """N_i for local query rows o_m: min(i + 1 + kv_offset, nk) when causal, else nk."""
    if CAUSAL:
        return tl.minimum(o_m + 1 + kv_offset, nk)
    return o_m * 0 + nk


@triton.jit
def _row_consts(o_m, nk, kv_offset, log_d, CAUSAL: tl.constexpr):
    """Per query row: N_i, N_i as float, the LSSAR offset O_i, and the score scale ln D · ln N_i."""
    n_i = _visible(o_m, nk, kv_offset, CAUSAL)
    nf = n_i.to(tl.float32)
    off = tl.where(n_i > 3, 1.0, 0.0)
    c_i = log_d * tl.log(tl.maximum(n_i, 1).to(tl.float32))
    return n_i, nf, off, c_i


@triton.jit
def _q_block(i_m, i_zh, cu_q, cu_k, Tq, Tk, H, G, IS_VARLEN: tl.constexpr, BM: tl.constexpr):
    """A query-block program's place: (query count, key count, flat row of (b, h, 0), flat key row
    of (b, h // G, 0), its local query rows)."""
    i_z, i_h = i_zh // H, i_zh % H
    b, q0, nq, k0, nk = _sequence(i_z, cu_q, cu_k, Tq, Tk, IS_VARLEN)
    row0 = (b * H + i_h).to(tl.int64) * Tq + q0  # flat row of (b, h, local 0)
    krow0 = (b * (H // G) + i_h // G).to(tl.int64) * Tk + k0
    return nq, nk, row0, krow0, i_m * BM + tl.arange(0, BM)


@triton.jit
def _key_tile(k, v, rk, krow0, o_n, o_d, nk, D, LOAD_V: tl.constexpr):
    """Keys (and values) of rows o_n, [BN, BD], and their inverse norms [BN]; zero past nk and D."""
    m_n = o_n < nk
    m_kd = m_n[:, None] & (o_d < D)[None, :]
    b_k = tl.load(k + (krow0 + o_n[:, None]) * D + o_d[None, :], mask=m_kd, other=0.0)
    if LOAD_V:
        b_v = tl.load(v + (krow0 + o_n[:, None]) * D + o_d[None, :], mask=m_kd, other=0.0)
    else:
        b_v = b_k
    b_rk = tl.load(rk + krow0 + o_n, mask=m_n, other=0.0)
    return b_k, b_v, b_rk


@triton.jit
def _scores(b_q, b_k, b_cq, b_rk, DOT_PREC: tl.constexpr):
    """s = (c_i rq_i) q·k (rk_j): the scaled QK-norm scores of a tile, [BM, BN]."""
    return tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC) * b_cq[:, None] * b_rk[None, :]


@triton.jit
def _row_stats(stats, delta, plane, row0, o_m, m_m):
    """The forward's saved (L, M, R) and Δ = do·o of query rows o_m."""
    L = tl.load(stats + row0 + o_m, mask=m_m, other=0.0)
    M = tl.load(stats + plane + row0 + o_m, mask=m_m, other=0.0)
    R = tl.load(stats + 2 * plane + row0 + o_m, mask=m_m, other=0.0)
    b_delta = tl.load(delta + row0 + o_m, mask=m_m, other=0.0)
    return L, M, R, b_delta


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _for_precision(_FWD)})
@triton.jit
def _fwd_kernel(
    q,
    k,
    v,
    rq,
    rk,
    o,
    stats,
    cu_q,
    cu_k,
    Tq,
    Tk,
    H,
    G,
    D,
    plane,
    kv_offset,
    log_d,
    p,
    zero_tol,
    CAUSAL: tl.constexpr,
    REWEIGHT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    P_INT: tl.constexpr = 0,
):
    FAST: tl.constexpr = DOT_PREC != "ieee"  # 16-bit inputs: the SFU log (see _softplus_e)
    i_m, i_zh = tl.program_id(0), tl.program_id(1)
    nq, nk, row0, krow0, o_m = _q_block(i_m, i_zh, cu_q, cu_k, Tq, Tk, H, G, IS_VARLEN, BM)
    if i_m * BM >= nq:
        return
    o_d = tl.arange(0, BD)
    m_m = o_m < nq
    m_d = o_d < D
    p_q = q + (row0 + o_m[:, None]) * D + o_d[None, :]
    b_q = tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
    b_rq = tl.load(rq + row0 + o_m, mask=m_m, other=0.0)  # [BM]
    n_i, nf, off, c_i = _row_consts(o_m, nk, kv_offset, log_d, CAUSAL)  # [BM] each
    b_cq = c_i * b_rq  # [BM]
    kv_end = tl.max(tl.where(m_m, n_i, 0), 0)

    b_L = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BD], dtype=tl.float32)
    if REWEIGHT:
        b_mx = tl.full([BM], float("-inf"), dtype=tl.float32)  # running row max (visible scores)
        b_sh = tl.zeros([BM], dtype=tl.float32)  # row shift (< 0 on underflow-safe rows, see _weight_e)
        # invisible scores are set to −inf once: their weight (softplus or shifted) is then exactly 0
        # and they drop out of the row max, so no second mask per score is needed
        for start_n in range(0, kv_end, BN):
            o_n = start_n + tl.arange(0, BN)
            b_k, _, b_rk = _key_tile(k, v, rk, krow0, o_n, o_d, nk, D, False)
            b_s = _scores(b_q, b_k, b_cq, b_rk, DOT_PREC)  # [BM, BN]
            b_s = tl.where(o_n[None, :] < n_i[:, None], b_s, float("-inf"))
            b_mx, b_sh, f = _online_shift(b_s, b_mx, b_sh)
            b_w, _ = _weight_e(b_s, b_sh * -1.4426950408889634, b_sh < 0.0, FAST)
            b_L = b_L * f + tl.sum(b_w, 1)
        b_L = _stored_sum(b_L, b_sh)  # from here on L as stored (ln of the row sum + shift if shifted)
        L_safe = tl.where(b_L > 0, b_L, 1.0)
        # M = N·(w/L at the row max) − O: softplus(m)/L, or e^(m − L) on a shifted row
        b_M = (
            nf
            * tl.where(
                b_L < 0.0, tl.exp(tl.minimum(b_mx - b_L, 0.0)), _softplus(tl.where(b_L > 0, b_mx, 0.0), FAST) / L_safe
            )
            - off
        )
        b_M = tl.where((b_L != 0.0) & (b_M > zero_tol), b_M, 0.0)
        b_M = tl.where(b_L != b_L, b_L, b_M)  # a NaN score keeps the row NaN (docs/numerics.md)
        inv_M = tl.where(b_M > 0, 1.0 / tl.where(b_M > 0, b_M, 1.0), 0.0)
        # t = ReLU(w a_i − b_i): per-row constants (w = e^(s − L) = w/L already on a shifted row)
        a_i = tl.where(b_L < 0.0, nf, nf / L_safe) * inv_M
        b_i = off * inv_M
        k_row = _exp_shift(b_L)
        sh_row = b_L < 0.0
        b_R = tl.zeros([BM], dtype=tl.float32)
    for start_n in range(0, kv_end, BN):
        o_n = start_n + tl.arange(0, BN)
        b_k, b_v, b_rk = _key_tile(k, v, rk, krow0, o_n, o_d, nk, D, True)  # [BN, BD], [BN, BD], [BN]
        b_s = _scores(b_q, b_k, b_cq, b_rk, DOT_PREC)  # [BM, BN]
        if REWEIGHT:
            b_w, _ = _weight_e(b_s, k_row, sh_row, FAST)  # [BM, BN]
            b_w = tl.where(o_n[None, :] < n_i[:, None], _lssar_weight(b_w, a_i, b_i, p, P_INT)[0], 0.0)
            b_R += tl.sum(b_w, 1)
        else:
            b_w = tl.where(o_n[None, :] < n_i[:, None], _softplus(b_s, FAST), 0.0)  # [BM, BN]
            b_L += tl.sum(b_w, 1)
        b_acc += tl.dot(b_w.to(b_v.dtype), b_v, input_precision=DOT_PREC)
    if REWEIGHT:
        inv = tl.where((b_M > 0) & (b_R > 0), 1.0 / tl.where(b_R > 0, b_R, 1.0), 0.0)
        inv = tl.where(b_M != b_M, b_M, inv)  # NaN row: NaN out, not the all-zero row
    else:
        inv = tl.where(b_L > 0, 1.0 / tl.where(b_L > 0, b_L, 1.0), 0.0)
        inv = tl.where(b_L != b_L, b_L, inv)
    b_o = b_acc * inv[:, None]
    tl.store(o + (row0 + o_m[:, None]) * D + o_d[None, :], b_o.to(o.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])
    tl.store(stats + row0 + o_m, b_L, mask=m_m)
    if REWEIGHT:
        tl.store(stats + plane + row0 + o_m, b_M, mask=m_m)
        tl.store(stats + 2 * plane + row0 + o_m, b_R, mask=m_m)
    else:
        # LSSA has no running max (no per-score cost for it): a row whose sum is this small may have
        # every score below SHIFT_BELOW (L <= N·softplus(max)), so _fwd_shift_kernel redoes it
        # with the row max; the M plane (0 for LSSA) carries the flag there and is reset to 0.
        redo = b_L < nf * _REDO_BELOW
        tl.store(stats + plane + row0 + o_m, tl.where(redo, 1.0, 0.0), mask=m_m)
        tl.store(stats + 2 * plane + row0 + o_m, b_L * 0.0, mask=m_m)


@triton.jit
def _fwd_shift_kernel(
    q,
    k,
    v,
    rq,
    rk,
    o,
    stats,
    cu_q,
    cu_k,
    Tq,
    Tk,
    H,
    G,
    D,
    plane,
    kv_offset,
    log_d,
    CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
):
    """LSSA rows flagged by _fwd_kernel (a tiny row sum, see _REDO_BELOW), redone by the rule of
    docs/numerics.md: pass 1 the row max m, pass 2 the weights (e^(s − m) on a row with
    m < SHIFT_BELOW, else softplus(s) with the accurate log) and o; stores o and L of the flagged
    rows and clears the flags. A block without a flagged row (every block, in ordinary use) only
    reads its BM flags."""
    i_m, i_zh = tl.program_id(0), tl.program_id(1)
    nq, nk, row0, krow0, o_m = _q_block(i_m, i_zh, cu_q, cu_k, Tq, Tk, H, G, IS_VARLEN, BM)
    if i_m * BM >= nq:
        return
    m_m = o_m < nq
    redo = tl.load(stats + plane + row0 + o_m, mask=m_m, other=0.0) != 0.0
    if tl.max(redo.to(tl.int32), 0) == 0:
        return
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    b_q = tl.load(q + (row0 + o_m[:, None]) * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)
    b_rq = tl.load(rq + row0 + o_m, mask=m_m, other=0.0)
    n_i, nf, off, c_i = _row_consts(o_m, nk, kv_offset, log_d, CAUSAL)
    b_cq = c_i * b_rq
    kv_end = tl.max(tl.where(m_m, n_i, 0), 0)
    b_mx = tl.full([BM], float("-inf"), dtype=tl.float32)
    for start_n in range(0, kv_end, BN):
        o_n = start_n + tl.arange(0, BN)
        b_k, _, b_rk = _key_tile(k, v, rk, krow0, o_n, o_d, nk, D, False)
        b_s = tl.where(o_n[None, :] < n_i[:, None], _scores(b_q, b_k, b_cq, b_rk, DOT_PREC), float("-inf"))
        b_mx = tl.maximum(b_mx, tl.max(b_s, 1))
    b_sh = tl.where((b_mx < _SHIFT_BELOW) & (b_mx > float("-inf")), b_mx, 0.0)
    k_row = b_sh * -1.4426950408889634
    sh_row = b_sh < 0.0
    b_L = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BD], dtype=tl.float32)
    for start_n in range(0, kv_end, BN):
        o_n = start_n + tl.arange(0, BN)
        b_k, b_v, b_rk = _key_tile(k, v, rk, krow0, o_n, o_d, nk, D, True)
        b_s = tl.where(o_n[None, :] < n_i[:, None], _scores(b_q, b_k, b_cq, b_rk, DOT_PREC), float("-inf"))
        b_w, _ = _weight_e(b_s, k_row, sh_row, False)  # invisible: −inf, weight 0
        b_L += tl.sum(b_w, 1)
        b_acc += tl.dot(b_w.to(b_v.dtype), b_v, input_precision=DOT_PREC)
    inv = tl.where(b_L > 0, 1.0 / tl.where(b_L > 0, b_L, 1.0), 0.0)
    inv = tl.where(b_L != b_L, b_L, inv)
    b_o = b_acc * inv[:, None]
    m_r = m_m & redo
    tl.store(o + (row0 + o_m[:, None]) * D + o_d[None, :], b_o.to(o.dtype.element_ty), mask=m_r[:, None] & m_d[None, :])
    tl.store(stats + row0 + o_m, _stored_sum(b_L, b_sh), mask=m_r)
    tl.store(stats + plane + row0 + o_m, b_L * 0.0, mask=m_r)


@triton.jit
def _bwd_row_consts(L, M, R, delta, gamma, nf, off, c_i, rq, p, REWEIGHT: tl.constexpr):
    """Per query row, the constants of the per-score backward (so each score costs FMAs, not
    divisions): (1/L, a_i, b_i of t = ReLU(w a_i − b_i), 1/R, g1 = p/(M R), g2 = c_i rq_i N/L or
    c_i rq_i /L, Δ, Γ). g2 folds the score scale c_i and the query's inverse norm rq_i into ds, so
    dk̂ = dsᵀ q directly and dq̂ = ds k̂ / rq (k̂ = rk k).
    On a shifted row (L < 0, see _weight_e) the per-score weight and sigmoid are both e^(s − L),
    already divided by the sum: "1/L" is 1 there (_inv_sum). A NaN row (NaN L or M: a NaN score it
    sees) makes a_i, 1/R, g1 and g2 NaN, so P and ds of its visible scores come out NaN (a failed
    comparison would otherwise give an all-zero row). Also returns (k_row, sh_row) of _weight_e."""
    inv_L = _inv_sum(L)
    if REWEIGHT:
        nan = (L != L) | (M != M)
        inv_M = tl.where(M > 0, 1.0 / tl.where(M > 0, M, 1.0), 0.0)
        inv_R = tl.where(R > 0, 1.0 / tl.where(R > 0, R, 1.0), 0.0)
        a_i = nf * inv_L * inv_M
        b_i = off * inv_M
        g1 = p * inv_M * inv_R
        g2 = nf * inv_L * c_i * rq
        a_i = tl.where(nan, float("nan"), a_i)
        inv_R = tl.where(nan, float("nan"), inv_R)
        g1 = tl.where(nan, float("nan"), g1)
        g2 = tl.where(nan, float("nan"), g2)
    else:
        a_i = inv_L
        b_i = inv_L * 0.0
        inv_R = inv_L
        g1 = inv_L
        g2 = inv_L * c_i * rq
    return a_i, b_i, inv_R, g1, g2, _exp_shift(L), L < 0.0


@triton.jit
def _scores_backward(
    b_s,
    b_dP,
    m_vis,
    a_i,
    b_i,
    inv_R,
    g1,
    g2,
    k_row,
    sh_row,
    delta,
    gamma,
    p,
    REWEIGHT: tl.constexpr,
    P_INT: tl.constexpr,
    FAST: tl.constexpr,
):
    """(P, ds_row, dbase·w) of one [BM, BN] tile from its scores s and dP = do·v (formulas: score_backward
    in csrc/include/nlseq/softplus_attention.h). ds_row = ds · c_i rq_i (see _bwd_row_consts); the
    sigmoid reuses softplus's e = exp(−|s|): σ(s) = (s >= 0 ? 1 : e) / (1 + e). On a shifted row
    (sh_row) both are e = e^(s − L) (s < 0 there, σ(s) = e^s to ~1e-18): the 1 + e becomes 1."""
    b_w, e = _weight_e(b_s, k_row, sh_row, FAST)
    sig = tl.where(b_s >= 0.0, 1.0, e) * _rcp(1.0 + e * tl.where(sh_row, 0.0, 1.0)[:, None])
    if REWEIGHT:
        t = tl.maximum(b_w * a_i[:, None] - b_i[:, None], 0.0)
        if P_INT > 1:
            tp1 = _pow_int(t, P_INT - 1)  # t^(p−1), 0 at t = 0
            b_P = tl.where(m_vis, tp1 * t * inv_R[:, None], 0.0)
            dbase = (b_dP - delta[:, None]) * tp1 * g1[:, None]
        else:
            tp = _pow(t, p, P_INT)
            if P_INT == 1:
                tp1 = tl.where(t > 0.0, 1.0, 0.0)
            else:
                tp1 = tl.where(t > 0.0, _pow(t, p - 1.0, 0), 0.0)
            b_P = tl.where(m_vis, tp * inv_R[:, None], 0.0)
            dbase = (b_dP - delta[:, None]) * tp1 * g1[:, None]
        ds = tl.where(m_vis, sig * (dbase - gamma[:, None]) * g2[:, None], 0.0)
        gw = tl.where(m_vis, dbase * b_w, 0.0)
    else:
        b_P = tl.where(m_vis, b_w * a_i[:, None], 0.0)
        ds = tl.where(m_vis, sig * (b_dP - delta[:, None]) * g2[:, None], 0.0)
        gw = ds
    return b_P, ds, gw


@triton.autotune(configs=_bwd_configs(), key=_KEY, prune_configs_by={"early_config_prune": _for_precision(_BWD)})
@triton.jit
def _bwd_gamma_kernel(
    q,
    k,
    v,
    rq,
    rk,
    do,
    stats,
    delta,
    gamma,
    cu_q,
    cu_k,
    Tq,
    Tk,
    H,
    G,
    D,
    plane,
    kv_offset,
    log_d,
    p,
    CAUSAL: tl.constexpr,
    REWEIGHT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    P_INT: tl.constexpr = 0,
):
    """LSSAR only: Γ_i = Σ_j dbase_ij w_ij / L_i of each query row, which every ds of the row needs
    before the fused pass can run (two matmuls per tile pair: s and dP)."""
    FAST: tl.constexpr = DOT_PREC != "ieee"  # 16-bit inputs: the SFU log (see _softplus_e)
    i_m, i_zh = tl.program_id(0), tl.program_id(1)
    nq, nk, row0, krow0, o_m = _q_block(i_m, i_zh, cu_q, cu_k, Tq, Tk, H, G, IS_VARLEN, BM)
    if i_m * BM >= nq:
        return
    o_d = tl.arange(0, BD)
    m_m = o_m < nq
    m_d = o_d < D
    m_qd = m_m[:, None] & m_d[None, :]
    b_q = tl.load(q + (row0 + o_m[:, None]) * D + o_d[None, :], mask=m_qd, other=0.0)  # [BM, BD]
    b_do = tl.load(do + (row0 + o_m[:, None]) * D + o_d[None, :], mask=m_qd, other=0.0)  # [BM, BD]
    b_rq = tl.load(rq + row0 + o_m, mask=m_m, other=0.0)
    L, M, R, b_delta = _row_stats(stats, delta, plane, row0, o_m, m_m)
    n_i, nf, off, c_i = _row_consts(o_m, nk, kv_offset, log_d, CAUSAL)
    a_i, b_i, inv_R, g1, g2, k_row, sh_row = _bwd_row_consts(L, M, R, b_delta, b_delta, nf, off, c_i, b_rq, p, REWEIGHT)
    b_cq = c_i * b_rq
    kv_end = tl.max(tl.where(m_m, n_i, 0), 0)
    b_gamma = tl.zeros([BM], dtype=tl.float32)
    for start_n in range(0, kv_end, BN):
        o_n = start_n + tl.arange(0, BN)
        b_k, b_v, b_rk = _key_tile(k, v, rk, krow0, o_n, o_d, nk, D, True)
        b_s = _scores(b_q, b_k, b_cq, b_rk, DOT_PREC)
        b_dP = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)
        m_vis = (o_n[None, :] < n_i[:, None]) & m_m[:, None]
        _, _, gw = _scores_backward(
            b_s, b_dP, m_vis, a_i, b_i, inv_R, g1, g2, k_row, sh_row, b_delta, b_delta, p, REWEIGHT, P_INT, FAST
        )
        b_gamma += tl.sum(gw, 1)
    # Σ dbase·w / L: the weights of a shifted row are already divided (_inv_sum); NaN rows stay NaN
    b_gamma = tl.where(L > 0, b_gamma / tl.where(L > 0, L, 1.0), tl.where(L < 0, b_gamma, 0.0))
    b_gamma = tl.where((L != L) | (M != M), float("nan"), b_gamma)
    tl.store(gamma + row0 + o_m, b_gamma, mask=m_m)


@triton.autotune(
    configs=_bwd_configs(),
    key=_KEY,
    prune_configs_by={"early_config_prune": _for_precision(_BWD)},
    reset_to_zero=["dq"],
)
@triton.jit
def _bwd_kernel(
    q,
    k,
    v,
    rq,
    rk,
    do,
    stats,
    delta,
    gamma,
    dk,
    dv,
    cu_q,
    cu_k,
    Tq,
    Tk,
    H,
    G,
    D,
    plane,
    kv_offset,
    log_d,
    p,
    CAUSAL: tl.constexpr,
    REWEIGHT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    dq,
    P_INT: tl.constexpr = 0,
):
    """FlashAttention-2's backward: one program per key block streams the query blocks of its heads
    and does 5 matmuls per tile pair (s = q kᵀ, dP = do vᵀ, dv += Pᵀ do, dk̂ += dsᵀ q, dq̂ += ds k̂);
    dq̂ is accumulated across key blocks with float32 atomic adds (dq zeroed by the launcher, which
    divides it by rq afterwards, see _bwd_row_consts)."""
    FAST: tl.constexpr = DOT_PREC != "ieee"  # 16-bit inputs: the SFU log (see _softplus_e)
    # float32 (IEEE dots, unrolled into FMAs): k, v and k̂ are loaded again for every query tile (from
    # L1/L2) instead of being held in registers across the query loop, where ptxas spilled them in
    # every config (sass_report: 16x16 tiles, 4 warps, D = 128: 512 B spilled; reloaded: none)
    RELOAD_KV: tl.constexpr = DOT_PREC == "ieee"
    i_n, i_zg = tl.program_id(0), tl.program_id(1)
    Hkv = H // G
    i_z, i_g = i_zg // Hkv, i_zg % Hkv
    b, q0, nq, k0, nk = _sequence(i_z, cu_q, cu_k, Tq, Tk, IS_VARLEN)
    if i_n * BN >= nk:
        return
    krow0 = (b * Hkv + i_g).to(tl.int64) * Tk + k0
    o_n = i_n * BN + tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    m_kd = (o_n < nk)[:, None] & m_d[None, :]
    b_k, b_v, b_rk = _key_tile(k, v, rk, krow0, o_n, o_d, nk, D, True)  # [BN, BD], [BN, BD], [BN]
    b_kh = (b_k.to(tl.float32) * b_rk[:, None]).to(b_k.dtype)  # k̂ = rk k, for dq̂
    b_dk = tl.zeros([BN, BD], dtype=tl.float32)
    b_dv = tl.zeros([BN, BD], dtype=tl.float32)
    # the first query row that sees key i_n·BN: i + kv_offset >= i_n·BN
    if CAUSAL:
        m_lo = (tl.maximum(i_n * BN - kv_offset, 0) // BM) * BM
    else:
        m_lo = 0
    for i_hh in range(0, G):
        i_h = i_g * G + i_hh
        row0 = (b * H + i_h).to(tl.int64) * Tq + q0
        for start_m in range(m_lo, nq, BM):
            o_m = start_m + tl.arange(0, BM)
            m_m = o_m < nq
            m_qd = m_m[:, None] & m_d[None, :]
            b_q = tl.load(q + (row0 + o_m[:, None]) * D + o_d[None, :], mask=m_qd, other=0.0)  # [BM, BD]
            b_do = tl.load(do + (row0 + o_m[:, None]) * D + o_d[None, :], mask=m_qd, other=0.0)  # [BM, BD]
            b_rq = tl.load(rq + row0 + o_m, mask=m_m, other=0.0)
            L, M, R, b_delta = _row_stats(stats, delta, plane, row0, o_m, m_m)
            b_gamma = tl.load(gamma + row0 + o_m, mask=m_m, other=0.0)
            n_i, nf, off, c_i = _row_consts(o_m, nk, kv_offset, log_d, CAUSAL)
            a_i, b_i, inv_R, g1, g2, k_row, sh_row = _bwd_row_consts(
                L, M, R, b_delta, b_gamma, nf, off, c_i, b_rq, p, REWEIGHT
            )
            if RELOAD_KV:
                b_k, b_v, b_rk = _key_tile(k, v, rk, krow0, o_n, o_d, nk, D, True)
                b_kh = (b_k.to(tl.float32) * b_rk[:, None]).to(b_k.dtype)
            b_s = _scores(b_q, b_k, c_i * b_rq, b_rk, DOT_PREC)  # [BM, BN]
            b_dP = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)  # [BM, BN]
            m_vis = (o_n[None, :] < n_i[:, None]) & m_m[:, None]
            b_P, ds, _ = _scores_backward(
                b_s, b_dP, m_vis, a_i, b_i, inv_R, g1, g2, k_row, sh_row, b_delta, b_gamma, p, REWEIGHT, P_INT, FAST
            )
            b_dv += tl.dot(tl.trans(b_P.to(b_do.dtype)), b_do, input_precision=DOT_PREC)  # dv += Pᵀ do
            b_ds = ds.to(b_q.dtype)
            b_dk += tl.dot(tl.trans(b_ds), b_q, input_precision=DOT_PREC)  # dk̂ += dsᵀ q
            b_dq = tl.dot(b_ds, b_kh, input_precision=DOT_PREC)  # rq_i dq̂_i, this key block's part
            tl.atomic_add(dq + (row0 + o_m[:, None]) * D + o_d[None, :], b_dq, mask=m_qd, sem="relaxed")
    tl.store(dk + (krow0 + o_n[:, None]) * D + o_d[None, :], b_dk, mask=m_kd)
    tl.store(dv + (krow0 + o_n[:, None]) * D + o_d[None, :], b_dv, mask=m_kd)


def _p_int(p) -> int:
    """p as the compile-time integer of the t^p multiplies (1..63), or 0 for the general exp2/log2 path."""
    return int(p) if 0 < p < 64 and float(p).is_integer() else 0


def _dot_precision(dtype) -> str:
    """DOT_PREC of a launch: "ieee" for float32 inputs (exact float32 products, FMAs on sm_90: float32
    users expect float32 accuracy, so never TF32), "tf32" otherwise (16-bit dots run in the input
    dtype on the tensor cores; the value only selects the fast per-score math there)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _common(q, k, cu_q, cu_k):
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    varlen = cu_q is not None
    if varlen:
        S = cu_q.numel() - 1
        max_q = int((cu_q[1:] - cu_q[:-1]).max().item())
        max_k = int((cu_k[1:] - cu_k[:-1]).max().item())
    else:
        S, max_q, max_k = B, Tq, Tk
    BD = max(16, triton.next_power_of_2(D))
    dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
    return dict(
        B=B,
        H=H,
        Tq=Tq,
        D=D,
        Hkv=Hkv,
        Tk=Tk,
        S=S,
        max_q=max_q,
        max_k=max_k,
        BD=BD,
        varlen=varlen,
        cu_q=cu_q if varlen else dummy,
        cu_k=cu_k if varlen else dummy,
        prec=_dot_precision(q.dtype),
    )


def _interpreter_dtype(*xs):
    """The interpreter computes bfloat16 arithmetic wrongly: there, bf16 inputs run in float32."""
    if triton_interpret() and xs[0].dtype == torch.bfloat16:
        return tuple(x.float() for x in xs)
    return xs


def softplus_attention_fwd(q, k, v, rq, rk, causal, p, kv_offset, cu_q, cu_k):
    """o [B, H, Tq, D] (q's dtype) and stats [3, B, H, Tq] float32 = (L, M, R)."""
    if triton_interpret() and q.dtype == torch.bfloat16:
        o, stats = softplus_attention_fwd(*_interpreter_dtype(q, k, v), rq, rk, causal, p, kv_offset, cu_q, cu_k)
        return o.to(q.dtype), stats
    c = _common(q, k, cu_q, cu_k)
    o = torch.empty_like(q)
    stats = torch.empty(3, c["B"], c["H"], c["Tq"], dtype=torch.float32, device=q.device)
    if c["max_q"] == 0:
        return o, stats
    grid = lambda META: (triton.cdiv(c["max_q"], META["BM"]), c["S"] * c["H"])  # noqa: E731
    _fwd_kernel[grid](
        q,
        k,
        v,
        rq.contiguous(),
        rk.contiguous(),
        o,
        stats,
        c["cu_q"],
        c["cu_k"],
        c["Tq"],
        c["Tk"],
        c["H"],
        c["H"] // c["Hkv"],
        c["D"],
        c["B"] * c["H"] * c["Tq"],
        kv_offset,
        math.log(c["D"]),
        float(p),
        ZERO_ROW_TOL,
        CAUSAL=causal,
        REWEIGHT=p > 0,
        IS_VARLEN=c["varlen"],
        DOT_PREC=c["prec"],
        BD=c["BD"],
        P_INT=_p_int(p),
    )
    if not p > 0:  # the rows flagged in the M plane (tiny sums): nearly free when there are none
        sc = _shift_config(c["prec"])
        _fwd_shift_kernel[(triton.cdiv(c["max_q"], sc["BM"]), c["S"] * c["H"])](
            q,
            k,
            v,
            rq.contiguous(),
            rk.contiguous(),
            o,
            stats,
            c["cu_q"],
            c["cu_k"],
            c["Tq"],
            c["Tk"],
            c["H"],
            c["H"] // c["Hkv"],
            c["D"],
            c["B"] * c["H"] * c["Tq"],
            kv_offset,
            math.log(c["D"]),
            CAUSAL=causal,
            IS_VARLEN=c["varlen"],
            DOT_PREC=c["prec"],
            BD=c["BD"],
            **sc,
        )
    return o, stats


def softplus_attention_bwd(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, cu_q, cu_k):
    """(dq̂ [B, H, Tq, D], dk̂ [B, Hkv, Tk, D], dv [B, Hkv, Tk, D]) in float32."""
    q, k, v, o, do = _interpreter_dtype(q, k, v, o, do)
    c = _common(q, k, cu_q, cu_k)
    stats = stats.to(torch.float32).contiguous()
    delta = (do.float() * o.float()).sum(-1).contiguous()  # Δ_i = do_i·o_i  [B, H, Tq]
    gamma = torch.zeros_like(delta)  # Γ_i (LSSAR), written by the dq kernel
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)  # atomically accumulated
    dk = torch.empty(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.empty(v.shape, dtype=torch.float32, device=q.device)
    rq, rk = rq.contiguous(), rk.contiguous()
    args = (
        c["Tq"],
        c["Tk"],
        c["H"],
        c["H"] // c["Hkv"],
        c["D"],
        c["B"] * c["H"] * c["Tq"],
        kv_offset,
        math.log(c["D"]),
        float(p),
    )
    meta = dict(CAUSAL=causal, REWEIGHT=p > 0, IS_VARLEN=c["varlen"], DOT_PREC=c["prec"], BD=c["BD"])
    if p > 0 and c["max_q"] > 0:
        grid_q = lambda META: (triton.cdiv(c["max_q"], META["BM"]), c["S"] * c["H"])  # noqa: E731
        _bwd_gamma_kernel[grid_q](
            q, k, v, rq, rk, do, stats, delta, gamma, c["cu_q"], c["cu_k"], *args, **meta, P_INT=_p_int(p)
        )
    if c["max_k"] > 0:
        grid_k = lambda META: (triton.cdiv(c["max_k"], META["BN"]), c["S"] * c["Hkv"])  # noqa: E731
        _bwd_kernel[grid_k](
            q,
            k,
            v,
            rq,
            rk,
            do,
            stats,
            delta,
            gamma,
            dk,
            dv,
            c["cu_q"],
            c["cu_k"],
            *args,
            **meta,
            dq=dq,
            P_INT=_p_int(p),
        )
    else:
        dk.zero_()
        dv.zero_()
    dq /= rq.unsqueeze(-1)  # the kernel accumulates rq_i dq̂_i (rq > 0: 1 / max(‖q‖, eps) or 1)
    return dq, dk, dv
