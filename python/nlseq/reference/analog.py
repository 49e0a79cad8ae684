"""PyTorch reference of the fused analog crossbar + NL-ADC op (docs/spec.md §3.1–3.2).

The op maps digital inputs x [M, K] through one simulated crossbar column per output n:

    xq      = DAC(x)                                     (in_bits over [-x_max, x_max])
    acc     = xq @ weightᵀ                               (weight = programmed (G⁺ − G⁻)·w_max/g_max)
    I       = acc · col_scale[n]                         (µA; col_scale = V_read·g_max/(x_max·w_max[n]))
    σ[m]    = sqrt(noise_a · Σ_k xq[m,k]² + noise_b)     (µA; read + output + comparator noise)
    I      += σ[m] · z[m, n]                             (z standard normal: Philox or supplied)
    code    = #{k : I > thresholds[n, k]}                (the ramp comparator count)
    y       = levels[n, code]                            (the ADC returns the activation)

Read noise is modelled on the column current, not per device: with independent per-device read
noise of std σ_read·g_max on both devices of a pair, the column current gets
Σ_k V_k (ξ⁺_k − ξ⁻_k) σ_read g_max, which is exactly Gaussian with variance
2 σ_read² g_max² Σ_k V_k² — one draw per output instead of 2K. Output noise (one periphery per
tile, std σ_out times the tile's full-scale current V_read·g_max·rows) and comparator noise
(std σ_cmp in µA) are independent Gaussians and fold into the same draw; ``nlseq.analog``
computes ``noise_a`` and ``noise_b`` from a CrossbarConfig.

Random numbers (shared bit for bit with csrc/include/nlseq/analog.h and kernels/analog.py):
element e = m·N + n uses Philox4x32-10 with key (seed lo, seed hi) and counter
(p lo, p hi, offset lo, offset hi), p = e >> 2 (one call gives four normals); j = e & 3 picks the
word pair (a, b) = (r0, r1) for j < 2 and (r2, r3) for j >= 2, u1 = ((a >> 8) + ½)·2⁻²⁴,
u2 = (b >> 8)·2⁻²⁴, and z = sqrt(−2 ln u1)·cos(2π u2) for even j, ·sin(2π u2) for odd j, with ln,
cos and sin the fixed float32 polynomials of ``log_unit`` / ``sincos_turn`` (no libm: every
backend performs the same roundings).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit words of a·b for a constant a < 2³² and int64 tensor b < 2³², without
    overflowing int64: b is split in 16-bit halves."""
    bl, bh = b & 0xFFFF, b >> 16
    p_l = a * bl  # < 2^48
    p_h = a * bh  # < 2^48
    mid = p_l + ((p_h & 0xFFFF) << 16)  # < 2^49
    lo = mid & _MASK32
    hi = ((p_h >> 16) + (mid >> 32)) & _MASK32
    return hi, lo


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 counter words; key = the 64-bit seed."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for r in range(10):
        if r:
            k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_normal(M: int, N: int, seed: int, offset: int, device=None) -> Tensor:
    """The standard normals z [M, N] (float32) that every backend draws for (seed, offset)."""
    e = torch.arange(M * N, dtype=torch.int64, device=device)
    p, j = e >> 2, e & 3
    zeros = torch.zeros_like(p)
    r0, r1, r2, r3 = philox4x32(
        p & _MASK32, (p >> 32) & _MASK32, zeros + (offset & _MASK32), zeros + ((offset >> 32) & _MASK32), seed
    )
    a, b = torch.where(j < 2, r0, r2), torch.where(j < 2, r1, r3)
    u1 = ((a >> 8).to(torch.float32) + 0.5) * (2.0**-24)
    radius = torch.sqrt(-2.0 * log_unit(u1))
    c, s = sincos_turn(b)
    z = torch.where((j & 1) == 0, radius * c, radius * s)
    return z.view(M, N)


# float32 constants of the portable math (csrc/include/nlseq/analog.h), in Horner order
_LOG_POLY = (0.11111111, 0.14285715, 0.2, 0.33333334, 1.0)
_SIN_POLY = (1.6059044e-10, -2.5052108e-08, 2.7557319e-06, -0.0001984127, 0.008333334, -0.16666667, 1.0)
_COS_POLY = (-1.1470745e-11, 2.0876756e-09, -2.755732e-07, 2.4801588e-05, -0.0013888889, 0.041666668, -0.5, 1.0)


def _horner(x2: Tensor, coeffs) -> Tensor:
    p = torch.full_like(x2, coeffs[0])
    for c in coeffs[1:]:
        p = p * x2 + c
    return p


def log_unit(u: Tensor) -> Tensor:
    """ln u for float32 u in (0, 1], the fixed-polynomial definition every backend uses."""
    bits = u.view(torch.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).view(torch.float32)
    big = m > 1.4142135
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1, e)
    s = (m - 1.0) / (m + 1.0)
    p = _horner(s * s, _LOG_POLY)
    return e.to(torch.float32) * 0.6931472 + 2.0 * s * p


def sincos_turn(b: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of 2π·(b >> 8)·2⁻²⁴ for int64 tensors b holding uint32 words."""
    quadrant = b >> 30
    x = ((b >> 8) & 0x3FFFFF).to(torch.float32) * (2.0**-24) * 6.2831855
    x2 = x * x
    sn = x * _horner(x2, _SIN_POLY)
    cp = _horner(x2, _COS_POLY)
    odd = (quadrant & 1) == 1
    c0, s0 = torch.where(odd, sn, cp), torch.where(odd, cp, sn)
    c = torch.where((quadrant == 1) | (quadrant == 2), -c0, c0)
    s = torch.where(quadrant >= 2, -s0, s0)
    return c, s


def dac_quantize(x: Tensor, in_bits: int, x_max: float) -> Tensor:
    """DAC: clamp to [-x_max, x_max] and round to 2^(in_bits-1) − 1 levels per side (half up);
    in_bits = 0 only clamps (an ideal converter)."""
    if in_bits == 0:
        return torch.clamp(x, -x_max, x_max)
    n = float(2 ** (in_bits - 1) - 1)
    inv_delta = torch.tensor(n / x_max, dtype=torch.float32).item()
    delta = torch.tensor(x_max / n, dtype=torch.float32).item()
    q = torch.clamp(torch.floor(x * inv_delta + 0.5), -n, n)
    return q * delta


def analog_mvm(
    x: Tensor,
    weight: Tensor,
    col_scale: Tensor,
    thresholds: Tensor,
    levels: Tensor,
    noise: Optional[Tensor],
    in_bits: int,
    x_max: float,
    noise_a: float,
    noise_b: float,
    seed: int,
    offset: int,
) -> Tensor:
    """The fused op in float32 torch ops, comparator count by ``torch.searchsorted`` (bucketize).

    x [M, K], weight [N, K], col_scale [N], thresholds [N, L−1] (non-decreasing), levels [N, L],
    noise [M, N] or None (then Philox normals for (seed, offset)). Returns y [M, N] float32.
    """
    M, N = x.shape[0], weight.shape[0]
    xq = dac_quantize(x.float(), in_bits, x_max)
    acc = xq @ weight.float().t()
    current = acc * col_scale.float()
    if noise_a != 0.0 or noise_b != 0.0:
        ssq = (xq * xq).sum(dim=1, keepdim=True)
        sigma = torch.sqrt(ssq * noise_a + noise_b)
        z = philox_normal(M, N, seed, offset, x.device) if noise is None else noise.float()
        current = current + sigma * z
    codes = analog_mvm_codes(current, thresholds.float())  # [M, N]
    y = torch.gather(levels.float(), 1, codes.t()).t()
    # A NaN current (a NaN input) has no code: NaN out, as in every kernel (nlseq/analog.h adc_level).
    return torch.where(torch.isnan(current), current, y).contiguous()


def analog_mvm_codes(current: Tensor, thresholds: Tensor) -> Tensor:
    """Comparator count #{k : current[m, n] > thresholds[n, k]} for a current [M, N] (int64)."""
    return torch.searchsorted(thresholds.contiguous(), current.t().contiguous(), right=False).t()
