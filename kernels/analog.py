"""Triton kernel of the fused analog crossbar + NL-ADC op (docs/spec.md §3.1–3.2).

One program computes a [BM, BN] block of y: it DAC-quantises x block by block along K while
accumulating xq @ weightᵀ (fp32, ``tl.dot``) and each row's Σ xq², then runs the epilogue in
registers: current, Philox normal (the same stream as csrc/include/nlseq/analog.h and the
reference), binary search over the column's ramp thresholds, level lookup, store. Nothing but
y goes back to memory.

Exactness (docs/gpu_kernels.md): the CPU kernels are built with -ffp-contract=off and IEEE sqrtf
and division, and every step of the DAC, the noise (Philox, the fixed log/sin/cos polynomials,
Box–Muller) and the current is exact float32 arithmetic, so the codes are bit-identical across
backends wherever the GEMM itself is exact. On a GPU Triton would lower ``/`` to div.full.f32 and
``tl.sqrt`` to sqrt.approx.f32 (both approximate) and contract a * b + c into one FMA (one
rounding instead of two); so divisions and square roots here are ``tl.div_rn`` / ``tl.sqrt_rn``
(div.rn.f32, sqrt.rn.f32) and the kernel is launched with ``enable_fp_fusion=False``. The FP32
GEMM (``tl.dot``, ieee) keeps its own FMAs: it is lowered to fma explicitly, not by contraction.
Offsets that scale with M·K, N·K or M·N are int64 (row bases computed once per program).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from nlseq.registry import triton_interpret


@triton.jit
def _clamp(v, lo, hi):
    """clamp as torch.clamp and nlseq/analog.h clamp_ do it: a NaN stays NaN."""
    v = tl.where(v < lo, lo, v)
    return tl.where(v > hi, hi, v)


@triton.jit
def _philox_normal(seed_lo, seed_hi, off_lo, off_hi, e):
    """Standard normal number e (int64 block) of the stream (seed, offset)."""
    p = e >> 2
    j = e & 3
    c0 = (p & 0xFFFFFFFF).to(tl.uint32)
    c1 = (p >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + off_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + off_hi.to(tl.uint32)
    k0 = tl.zeros_like(c0) + seed_lo.to(tl.uint32)
    k1 = tl.zeros_like(c0) + seed_hi.to(tl.uint32)
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
        m1 = tl.full(c0.shape, 0xCD9E8D57, tl.uint32)
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    a = tl.where(j < 2, c0, c2)
    b = tl.where(j < 2, c1, c3)
    u1 = ((a >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
    radius = tl.sqrt_rn(-2.0 * _log_unit(u1))  # IEEE sqrt, as the CPU's sqrtf
    c, s = _sincos_turn(b)
    return tl.where((j & 1) == 0, radius * c, radius * s)


@triton.jit
def _log_unit(u):
    """ln u on (0, 1]: the fixed float32 polynomial of csrc/include/nlseq/analog.h."""
    bits = u.to(tl.uint32, bitcast=True)
    e = (bits >> 23).to(tl.int32) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > 1.4142135
    m = tl.where(big, m * 0.5, m)
    e = tl.where(big, e + 1, e)
    s = tl.div_rn(m - 1.0, m + 1.0)  # IEEE division, as the CPU's (m − 1)/(m + 1)
    s2 = s * s
    p = s2 * 0.0 + 0.11111111
    p = p * s2 + 0.14285715
    p = p * s2 + 0.2
    p = p * s2 + 0.33333334
    p = p * s2 + 1.0
    return e.to(tl.float32) * 0.6931472 + 2.0 * s * p


@triton.jit
def _sincos_turn(b):
    """cos and sin of 2π·(b >> 8)·2⁻²⁴ (uint32 b): quadrant from the top bits, Taylor on [0, π/2)."""
    quadrant = b >> 30
    x = ((b >> 8) & 0x3FFFFF).to(tl.float32) * 5.9604644775390625e-08 * 6.2831855
    x2 = x * x
    sp = x2 * 0.0 + 1.6059044e-10
    sp = sp * x2 - 2.5052108e-08
    sp = sp * x2 + 2.7557319e-06
    sp = sp * x2 - 0.0001984127
    sp = sp * x2 + 0.008333334
    sp = sp * x2 - 0.16666667
    sp = sp * x2 + 1.0
    sn = x * sp
    cp = x2 * 0.0 - 1.1470745e-11
    cp = cp * x2 + 2.0876756e-09
    cp = cp * x2 - 2.755732e-07
    cp = cp * x2 + 2.4801588e-05
    cp = cp * x2 - 0.0013888889
    cp = cp * x2 + 0.041666668
    cp = cp * x2 - 0.5
    cp = cp * x2 + 1.0
    odd = (quadrant & 1) == 1
    c0 = tl.where(odd, sn, cp)
    s0 = tl.where(odd, cp, sn)
    c = tl.where((quadrant == 1) | (quadrant == 2), -c0, c0)
    s = tl.where(quadrant >= 2, -s0, s0)
    return c, s


@triton.jit
def analog_mvm_fwd_kernel(
    x,
    w,
    col_scale,
    thr,
    lev,
    noise,
    y,
    M,
    N,
    K,
    x_max,
    inv_delta,
    delta,
    qmax,
    noise_a,
    noise_b,
    seed_lo,
    seed_hi,
    off_lo,
    off_hi,
    QUANTIZE: tl.constexpr,
    NOISY: tl.constexpr,
    SUPPLIED: tl.constexpr,
    BITS: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    IEEE: tl.constexpr,
):
    i_m, i_n = tl.program_id(0), tl.program_id(1)
    o_m = i_m * BM + tl.arange(0, BM)  # [BM]
    o_n = i_n * BN + tl.arange(0, BN)  # [BN]
    m_m, m_n = o_m < M, o_n < N
    # int64 row bases (M·K, N·K and M·N may pass 2^31); the k offsets added per step stay int32
    o_m64 = o_m.to(tl.int64)
    o_n64 = o_n.to(tl.int64)
    p_x0 = x + o_m64[:, None] * K  # [BM, 1]
    p_w0 = w + o_n64[None, :] * K  # [1, BN]
    b_acc = tl.zeros([BM, BN], dtype=tl.float32)
    b_ssq = tl.zeros([BM], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        p_x = p_x0 + o_k[None, :]
        b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BM, BK]
        if QUANTIZE:
            b_x = _clamp(tl.floor(b_x * inv_delta + 0.5), -qmax, qmax) * delta
        else:
            b_x = _clamp(b_x, -x_max, x_max)
        b_ssq += tl.sum(b_x * b_x, axis=1)
        p_w = p_w0 + o_k[:, None]
        b_w = tl.load(p_w, mask=m_n[None, :] & m_k[:, None], other=0.0).to(tl.float32)  # [BK, BN]
        if IEEE:
            b_acc += tl.dot(b_x, b_w, input_precision="ieee")
        else:
            b_acc += tl.dot(b_x, b_w)
    b_cs = tl.load(col_scale + o_n, mask=m_n, other=0.0)  # [BN]
    b_cur = b_acc * b_cs[None, :]
    m_y = m_m[:, None] & m_n[None, :]
    if NOISY:
        b_sigma = tl.sqrt_rn(b_ssq * noise_a + noise_b)  # [BM], IEEE sqrt as the CPU's sqrtf
        o_e = o_m64[:, None] * N + o_n64[None, :]  # [BM, BN] int64: element index m·N + n
        if SUPPLIED:
            b_z = tl.load(noise + o_e, mask=m_y, other=0.0)
        else:
            b_z = _philox_normal(seed_lo, seed_hi, off_lo, off_hi, o_e)
        b_cur = b_cur + b_sigma[:, None] * b_z
    # Binary search over the non-decreasing thresholds of each column: BITS steps.
    L: tl.constexpr = 1 << BITS
    b_pos = tl.zeros([BM, BN], dtype=tl.int32)
    p_thr = thr + o_n64[None, :] * (L - 1)
    for s in tl.static_range(BITS):
        step = L >> (s + 1)  # s is a constexpr of static_range, so step is one too (no annotation: it is
        # reassigned each iteration, which a tl.constexpr annotation forbids when compiling for a GPU)
        b_t = tl.load(p_thr + b_pos + (step - 1), mask=m_y, other=0.0)
        b_pos = tl.where(b_cur > b_t, b_pos + step, b_pos)
    b_y = tl.load(lev + o_n64[None, :] * L + b_pos, mask=m_y, other=0.0)
    b_y = tl.where(b_cur != b_cur, b_cur, b_y)  # a NaN current gives NaN, as in nlseq/analog.h adc_level
    tl.store(y + o_m64[:, None] * N + o_n64[None, :], b_y, mask=m_y)


def tile_config(noisy: bool, ieee: bool = True) -> tuple[int, int, int, int, int]:
    """(BM, BN, BK, num_warps, num_stages) of a launch. The epilogue holds the whole [BM, BN] tile in
    registers (current, Philox state, binary-search position), so the tile is sized for it: AOT for
    sm_90 with triton 3.9, 128×128 spilled (96 bytes without noise, 3.7 KB with Philox); 64×128
    with 8 warps does not for the noiseless IEEE GEMM (~190 registers), 64×64 does not for the
    rest (130-195 registers). tests/test_analog_triton_sm90.py checks every variant."""
    if triton_interpret():
        return 16, 16, 16, 4, 1
    return (64, 128, 32, 8, 3) if (ieee and not noisy) else (64, 64, 32, 8, 3)


def analog_mvm_fwd(
    x,
    weight,
    col_scale,
    thresholds,
    levels,
    noise,
    in_bits,
    x_max,
    noise_a,
    noise_b,
    seed,
    offset,
    allow_tf32: bool = False,
):
    """Launcher: x [M, K], weight [N, K], col_scale [N], thresholds [N, L−1], levels [N, L], float32
    contiguous; returns y [M, N]. ``allow_tf32`` trades the fp32 GEMM for TF32 tensor cores."""
    M, K = x.shape
    N, L = weight.shape[0], levels.shape[1]
    y = torch.empty(M, N, device=x.device, dtype=torch.float32)
    noisy = noise_a != 0.0 or noise_b != 0.0
    BM, BN, BK, warps, stages = tile_config(noisy, ieee=not allow_tf32)
    n = float(2 ** (in_bits - 1) - 1) if in_bits else 1.0
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731 (same rounding as the other backends)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    analog_mvm_fwd_kernel[grid](
        x,
        weight,
        col_scale,
        thresholds,
        levels,
        noise if noise is not None else x,
        y,
        M,
        N,
        K,
        f32(x_max),
        f32(n / x_max),
        f32(x_max / n),
        n,
        f32(noise_a),
        f32(noise_b),
        seed & 0xFFFFFFFF,
        (seed >> 32) & 0xFFFFFFFF,
        offset & 0xFFFFFFFF,
        (offset >> 32) & 0xFFFFFFFF,
        QUANTIZE=in_bits > 0,
        NOISY=noisy,
        SUPPLIED=noise is not None,
        BITS=int(math.log2(L)),
        BM=BM,
        BN=BN,
        BK=BK,
        IEEE=not allow_tf32,
        num_warps=warps,
        num_stages=stages,
        enable_fp_fusion=False,  # two roundings for a * b + c, as the CPU kernels (-ffp-contract=off)
    )
    return y
