// Torch-free math of the analog family (docs/spec.md §3), shared by the CPU (g++) and CUDA (nvcc)
// kernels: the counter-based random numbers, the DAC and the ramp comparator count.
// python/nlseq/reference/analog.py and kernels/analog.py implement the same definitions.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "nlseq/common.h"

namespace nlseq {
namespace analog {

// ---------------------------------------------------------------- Philox4x32-10 (Salmon et al. 2011)
// Counter (c0, c1, c2, c3), key (k0, k1); ten rounds, the key bumped between rounds. The round
// and the bump are functions of their own so that the CPU kernel can run them across many
// counters at once (csrc/cpu/analog.cpp fill_normals: 64 groups a pass, hand-written AVX-512
// where available) with exactly this arithmetic.
NLSEQ_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
  const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
  c0 = n0;
  c2 = n2;
}

NLSEQ_HD void philox_bump_key(uint32_t& k0, uint32_t& k1) {
  k0 += 0x9E3779B9u;
  k1 += 0xBB67AE85u;
}

NLSEQ_HD void philox4x32_10(uint32_t (&c)[4], uint32_t k0, uint32_t k1) {
  NLSEQ_UNROLL
  for (int r = 0; r < 10; ++r) {
    if (r) philox_bump_key(k0, k1);
    philox_round(c[0], c[1], c[2], c[3], k0, k1);
  }
}

// ---------------------------------------------------------------- Box–Muller with portable math
// log and sin/cos are written out as fixed float32 polynomials (no libm, no libdevice): the same
// sequence of roundings runs in g++, nvcc, Triton and the PyTorch reference, the CPU loop
// vectorises, and the results are accurate to a few float32 ulps.
NLSEQ_HD float bits_as_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

NLSEQ_HD uint32_t float_as_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
#endif
}

// ln u for a normal float u in (0, 1]: u = 2^e·m with m in [√½, √2), ln m = 2·atanh(s),
// s = (m − 1)/(m + 1), |s| <= 0.172, series to s⁹ (truncation < 1e-9).
NLSEQ_HD float log_unit(float u) {
  const uint32_t bits = float_as_bits(u);
  int e = static_cast<int>(bits >> 23) - 127;
  float m = bits_as_float((bits & 0x007FFFFFu) | 0x3F800000u);
  const bool big = m > 1.4142135f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 0.11111111f;
  p = p * s2 + 0.14285715f;
  p = p * s2 + 0.2f;
  p = p * s2 + 0.33333334f;
  p = p * s2 + 1.0f;
  return static_cast<float>(e) * 0.6931472f + 2.0f * s * p;
}

// cos and sin of θ = 2π·(b >> 8)·2⁻²⁴: the quadrant is the top two bits of b, the rest gives
// φ = θ mod π/2 exactly; Taylor series to φ¹³ / φ¹⁴ on [0, π/2) (truncation < 1e-8).
NLSEQ_HD void sincos_turn(uint32_t b, float& c, float& s) {
  const uint32_t quadrant = b >> 30;
  const float x = static_cast<float>((b >> 8) & 0x3FFFFFu) * 5.9604644775390625e-08f * 6.2831855f;
  const float x2 = x * x;
  float sp = 1.6059044e-10f;
  sp = sp * x2 - 2.5052108e-08f;
  sp = sp * x2 + 2.7557319e-06f;
  sp = sp * x2 - 0.0001984127f;
  sp = sp * x2 + 0.008333334f;
  sp = sp * x2 - 0.16666667f;
  sp = sp * x2 + 1.0f;
  const float sn = x * sp;
  float cp = -1.1470745e-11f;
  cp = cp * x2 + 2.0876756e-09f;
  cp = cp * x2 - 2.755732e-07f;
  cp = cp * x2 + 2.4801588e-05f;
  cp = cp * x2 - 0.0013888889f;
  cp = cp * x2 + 0.041666668f;
  cp = cp * x2 - 0.5f;
  cp = cp * x2 + 1.0f;
  // θ = quadrant·π/2 + φ
  const bool odd = (quadrant & 1u) != 0;
  const float c0 = odd ? sn : cp, s0 = odd ? cp : sn;
  c = (quadrant == 1u || quadrant == 2u) ? -c0 : c0;
  s = (quadrant >= 2u) ? -s0 : s0;
}

// Box–Muller on two Philox words: u1 = ((a >> 8) + ½)·2⁻²⁴ ∈ (0, 1), θ = 2π·(b >> 8)·2⁻²⁴.
NLSEQ_HD void box_muller(uint32_t a, uint32_t b, float& z_cos, float& z_sin) {
  const float u1 = (static_cast<float>(a >> 8) + 0.5f) * 5.9604644775390625e-08f;
  const float radius = sqrtf(-2.0f * log_unit(u1));
  float c, s;
  sincos_turn(b, c, s);
  z_cos = radius * c;
  z_sin = radius * s;
}

// The four standard normals of group p (elements 4p..4p+3 of the stream (seed, offset)):
// counter (p lo, p hi, offset lo, offset hi), key (seed lo, seed hi); words (r0, r1) give
// elements 4p (cos) and 4p+1 (sin), words (r2, r3) elements 4p+2 (cos) and 4p+3 (sin).
NLSEQ_HD void normal_quad(uint64_t seed, uint64_t offset, uint64_t p, float (&z)[4]) {
  uint32_t c[4] = {static_cast<uint32_t>(p), static_cast<uint32_t>(p >> 32), static_cast<uint32_t>(offset),
                   static_cast<uint32_t>(offset >> 32)};
  philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller(c[0], c[1], z[0], z[1]);
  box_muller(c[2], c[3], z[2], z[3]);
}

// Normal number e of the stream (computes its whole group; use normal_quad in loops).
NLSEQ_HD float normal_at(uint64_t seed, uint64_t offset, uint64_t e) {
  float z[4];
  normal_quad(seed, offset, e >> 2, z);
  return z[e & 3];
}

// ---------------------------------------------------------------- DAC (docs/spec.md §3.1)
// in_bits > 0: 2^(in_bits-1) − 1 levels per side over [−x_max, x_max], rounding half up;
// in_bits = 0: an ideal converter (clamp only). Constants are computed once by Dac::make.
struct Dac {
  int in_bits;
  float x_max, inv_delta, delta, qmax;

  static Dac make(int in_bits, double x_max) {
    Dac d;
    d.in_bits = in_bits;
    d.x_max = static_cast<float>(x_max);
    const double n = in_bits > 0 ? static_cast<double>((int64_t(1) << (in_bits - 1)) - 1) : 1.0;
    d.inv_delta = static_cast<float>(n / x_max);
    d.delta = static_cast<float>(x_max / n);
    d.qmax = static_cast<float>(n);
    return d;
  }
};

// clamp(v, lo, hi) as torch.clamp does it (a NaN stays NaN, as in the reference), written as
// selects: g++ does not inline fminf/fmaxf (their NaN rules), and a call stops CPU loops vectorising.
NLSEQ_HD float clamp_(float v, float lo, float hi) {
  const float m = v < lo ? lo : v;
  return m > hi ? hi : m;
}

NLSEQ_HD float dac_quantize(float x, const Dac& d) {
  if (d.in_bits == 0) return clamp_(x, -d.x_max, d.x_max);
  const float q = clamp_(floorf(x * d.inv_delta + 0.5f), -d.qmax, d.qmax);
  return q * d.delta;
}

// ---------------------------------------------------------------- NL-ADC comparator count (docs/spec.md §3.2)
// #{k : u > thr[k]} for non-decreasing thr[0..L−2], L a power of two, by binary search: bits steps.
// Branch-free (the comparisons are coin flips to a branch predictor).
NLSEQ_HD int ramp_code(float u, const float* thr, int L) {
  int pos = 0;
  for (int step = L >> 1; step > 0; step >>= 1) pos += step & -static_cast<int>(u > thr[pos + step - 1]);
  return pos;
}

// The ADC output for a current and its comparator count: a NaN current (a NaN input) has no
// code, so it gives NaN, never a level that looks valid; every backend and the reference agree.
NLSEQ_HD float adc_level(float current, const float* levels_row, int code) {
  return current != current ? current : levels_row[code];
}

}  // namespace analog
}  // namespace nlseq
