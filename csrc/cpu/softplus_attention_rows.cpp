// Vectorised float forms of the row passes of softplus_attention_rows.h.
//
// libm's expf / log1pf are calls the compiler cannot vectorise, and they were most of the old
// kernel's time (one softplus per score). Here exp and log1p are short polynomials in plain
// loops that GCC vectorises in each target clone (csrc/cpu/simd.h), so one binary stays portable:
//   e^y, y <= 0:  y = n ln2 + r (|r| <= ln2/2, ln2 split in two parts), e^r by a degree-7
//                 polynomial (the Cephes expf one), times 2^n built from the exponent bits;
//                 0 below y = −87 (e^−87 ≈ 1.6e−38: as good as 0 beside any weight of a row
//                 that is not shifted, whose largest weight is >= softplus(−40) ≈ 4e−18);
//   log1p(u), 0 <= u <= 1: 2 atanh(z) with z = u / (2 + u) <= 1/3, its odd series to z^13
//                 (the first term left out is below 1.5e−8 relative);
//   softplus(x) = max(x, 0) + log1p(e^−|x|),  σ(x) = (x >= 0 ? 1 : e^−|x|) / (1 + e^−|x|).
// All three are within a few float ulps of the libm forms (relative error, the small-weight tail
// included); NaN propagates (a NaN score gives a NaN weight, issue 12) and ±inf give the limits.
// Loops carry `#pragma omp simd` so that the sums and maxima may be reordered into lanes.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd.h"
#include "softplus_attention_rows.h"

namespace nlseq {
namespace cpu {
namespace rows {
namespace {

constexpr int kChunk = 64;  // lanes of the power passes (stack arrays)

inline float bits_to_float(uint32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// e^y for y <= 0 (NaN stays NaN, −inf gives 0).
inline float exp_nonpos(float y) {
  const float magic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer in the low bits
  const float t = y * 1.44269504088896341f + magic;
  const float n = t - magic;
  const uint32_t ni = float_to_bits(t) - float_to_bits(magic);  // n, two's complement (unsigned: no overflow)
  float r = y - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = bits_to_float((ni + 127u) << 23);  // 2^n, n in [−126, 0] where used
  const float e = p * scale;
  return y < -87.0f ? 0.0f : e;
}

// log1p(u) for 0 <= u <= 1.
inline float log1p_unit(float u) {
  const float z = u / (2.0f + u);
  const float z2 = z * z;
  float q = 1.0f / 13.0f;
  q = q * z2 + 1.0f / 11.0f;
  q = q * z2 + 1.0f / 9.0f;
  q = q * z2 + 1.0f / 7.0f;
  q = q * z2 + 1.0f / 5.0f;
  q = q * z2 + 1.0f / 3.0f;
  q = q * z2 + 1.0f;
  return 2.0f * z * q;
}

inline float softplus_v(float x, float u) { return (x > 0.0f ? x : 0.0f) + log1p_unit(u); }
inline float sigmoid_v(float x, float u) { return (x >= 0.0f ? 1.0f : u) / (1.0f + u); }

// r[0, n) = t[0, n)^k for integer k >= 0 by repeated squaring (0 for t <= 0, as sa::pow_ratio;
// t^0 = 1 for t > 0), n <= kChunk.
inline void power(const float* t, int64_t n, int k, float* r) {
  float b[kChunk];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    r[j] = 1.0f;
    b[j] = t[j];
  }
  for (int e = k; e != 0; e >>= 1) {
    if (e & 1) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) r[j] *= b[j];
    }
    if (e > 1) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) b[j] *= b[j];
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) r[j] = t[j] > 0.0f ? r[j] : 0.0f;
}

NLSEQ_CLONES float scale_max_v(float* s, int64_t n, float c) {
  float mx = -INFINITY;
  int nan = 0;
#pragma omp simd reduction(max : mx) reduction(| : nan)
  for (int64_t j = 0; j < n; ++j) {
    const float sc = c * s[j];
    s[j] = sc;
    nan |= sc != sc;
    mx = sc > mx ? sc : mx;
  }
  return nan ? NAN : mx;
}

NLSEQ_CLONES float softplus_sum_v(float* s, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float x = s[j];
    const float w = softplus_v(x, exp_nonpos(-std::fabs(x)));
    s[j] = w;
    sum += w;
  }
  return sum;
}

NLSEQ_CLONES float lssar_terms_v(float* s, int64_t n, float nr, float L, float off, float M, float floor, int p) {
  const float inv_L = 1.0f / L, inv_M = 1.0f / M;
  float sum = 0.0f;
  float t[kChunk], w[kChunk];
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t m = n - j0 < kChunk ? n - j0 : kChunk;
    float* sj = s + j0;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      const float x = sj[j];
      const float base = nr * (softplus_v(x, exp_nonpos(-std::fabs(x))) * inv_L) - off;
      t[j] = x > floor && base > 0.0f ? base * inv_M : 0.0f;
    }
    power(t, m, p, w);
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < m; ++j) {
      sj[j] = w[j];
      sum += w[j];
    }
  }
  return sum;
}

NLSEQ_CLONES void lssa_backward_v(float* s, float* dp, int64_t n, float c, float L, float delta) {
  const float inv_L = 1.0f / L, cl = c * inv_L;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float x = s[j];
    const float u = exp_nonpos(-std::fabs(x));
    s[j] = softplus_v(x, u) * inv_L;
    dp[j] = cl * sigmoid_v(x, u) * (dp[j] - delta);
  }
}

// t_j = ReLU(N a_j − O) / M and a_j = softplus(s_j) / L, g_j = σ(s_j) / L for one chunk.
inline void lssar_chunk(const float* s, int64_t m, const sa::Row<float>& r, float* a, float* g, float* t) {
  const float inv_L = 1.0f / r.L, inv_M = 1.0f / r.M;
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    const float x = s[j];
    const float u = exp_nonpos(-std::fabs(x));
    a[j] = softplus_v(x, u) * inv_L;
    g[j] = sigmoid_v(x, u) * inv_L;
    const float base = r.n * a[j] - r.offset;
    t[j] = base > 0.0f ? base * inv_M : 0.0f;
  }
}

NLSEQ_CLONES float lssar_gamma_v(const float* s, const float* dp, int64_t n, const sa::Row<float>& r, int p) {
  // dbase = (dP − Δ) p t^(p−1) / (M R) where base > 0 (t > 0), else 0
  const float k = static_cast<float>(p) / (r.M * r.R);
  float a[kChunk], g[kChunk], t[kChunk], tp[kChunk];
  float sum = 0.0f;
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t m = n - j0 < kChunk ? n - j0 : kChunk;
    lssar_chunk(s + j0, m, r, a, g, t);
    power(t, m, p - 1, tp);
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < m; ++j) sum += (dp[j0 + j] - r.delta) * k * tp[j] * a[j];
  }
  return sum;
}

NLSEQ_CLONES void lssar_backward_v(float* s, float* dp, int64_t n, const sa::Row<float>& r, int p) {
  const float k = static_cast<float>(p) / (r.M * r.R), inv_R = 1.0f / r.R, cn = r.c * r.n;
  float a[kChunk], g[kChunk], t[kChunk], tp[kChunk];
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t m = n - j0 < kChunk ? n - j0 : kChunk;
    lssar_chunk(s + j0, m, r, a, g, t);
    power(t, m, p - 1, tp);
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      const float dbase = (dp[j0 + j] - r.delta) * k * tp[j];
      s[j0 + j] = tp[j] * t[j] * inv_R;  // t^p / R (0 where t = 0: tp is 0 there)
      dp[j0 + j] = cn * g[j] * (dbase - r.gamma);
    }
  }
}

}  // namespace

float scale_max(float* s, int64_t n, float c) { return scale_max_v(s, n, c); }
float softplus_sum(float* s, int64_t n) { return softplus_sum_v(s, n); }
float lssar_terms(float* s, int64_t n, float nr, float L, float off, float M, float floor, int p) {
  return lssar_terms_v(s, n, nr, L, off, M, floor, p);
}
void lssa_backward(float* s, float* dp, int64_t n, float c, float L, float delta) {
  lssa_backward_v(s, dp, n, c, L, delta);
}
float lssar_gamma(const float* s, const float* dp, int64_t n, const sa::Row<float>& r, int p) {
  return lssar_gamma_v(s, dp, n, r, p);
}
void lssar_backward(float* s, float* dp, int64_t n, const sa::Row<float>& r, int p) {
  lssar_backward_v(s, dp, n, r, p);
}

}  // namespace rows
}  // namespace cpu
}  // namespace nlseq
