// Elementwise passes of the CPU softplus attention kernels (docs/spec.md §2) over one row of a
// score tile: what runs between the two tile products (Q̂·K̂ᵀ and P·V, or their backward twins).
//
// Every function here has a scalar form for any accumulation type (the shared header's math,
// nlseq/softplus_attention.h: double runs it, and so do the rare rows the vector forms leave out)
// and, for float, a vectorised form (softplus_attention_rows.cpp: target clones, csrc/cpu/simd.h)
// whose softplus, sigmoid and exp are polynomials accurate to a few float ulps rather than libm
// calls, which do not vectorise. The vector forms take "ordinary" rows only, as the callers check:
// unshifted rows (L_i > 0) and, for LSSAR, M_i > 0 with an integer exponent 1 <= p <= 64.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "nlseq/softplus_attention.h"

namespace nlseq {
namespace cpu {
namespace rows {

namespace sa = nlseq::softplus_attention;

// Whether p is an exponent the vector forms raise by repeated squaring (as sa::pow_ratio does).
inline bool integer_power(double p) { return p >= 1.0 && p <= 64.0 && p == static_cast<double>(static_cast<int>(p)); }

// ---------------------------------------------------------------- float, vectorised (rows.cpp)
// s[0, n) *= c; returns max_j s_j, NaN when any s_j is NaN (n >= 1).
float scale_max(float* s, int64_t n, float c);
// s_j <- softplus(s_j); returns Σ_j.
float softplus_sum(float* s, int64_t n);
// LSSAR terms of an ordinary row: s_j <- t_j^p with t_j = ReLU(nr·softplus(s_j)/L − off)/M, 0 where
// s_j <= floor; returns Σ_j.
float lssar_terms(float* s, int64_t n, float nr, float L, float off, float M, float floor, int p);
// LSSA backward of an ordinary row (s already scaled by c): s_j <- P_ij = softplus(s_j)/L,
// dp_j <- ds_ij·c = c·σ(s_j)/L·(dp_j − Δ).
void lssa_backward(float* s, float* dp, int64_t n, float c, float L, float delta);
// Σ_j dbase_ij a_ij of an ordinary LSSAR row (the Γ_i pass), s scaled by c.
float lssar_gamma(const float* s, const float* dp, int64_t n, const sa::Row<float>& r, int p);
// LSSAR backward of an ordinary row: s_j <- P_ij, dp_j <- ds_ij·c.
void lssar_backward(float* s, float* dp, int64_t n, const sa::Row<float>& r, int p);

// ---------------------------------------------------------------- scalar forms (any T)
template <typename T> T scale_max_scalar(T* s, int64_t n, T c) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const T sc = c * s[j];
    s[j] = sc;
    if ((sc > mx || sc != sc) && mx == mx) mx = sc;  // NaN wins and stays (issue 12)
  }
  return mx;
}

template <typename T> T shifted_sum_scalar(T* s, int64_t n, T shift) {
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = sa::shifted_weight(s[j], shift);
    sum += s[j];
  }
  return sum;
}

template <typename T> T lssar_terms_scalar(T* s, int64_t n, T nr, T L, T off, T M, T floor, T p) {
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const T sc = s[j];
    if (sc <= floor || !(M > T(0))) {
      s[j] = T(0);  // base <= 0 (or an all-zero row): no softplus, no power
      continue;
    }
    const T base = nr * sa::weight_over_sum(sc, L) - off;
    const T wt = base > T(0) ? sa::pow_ratio(base / M, p) : T(0);
    sum += wt;
    s[j] = wt;
  }
  return sum;
}

template <typename T> T lssar_gamma_scalar(const T* s, const T* dp, int64_t n, const sa::Row<T>& r, T p) {
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const T a = sa::weight_over_sum(s[j], r.L);  // w / L
    sum += sa::lssar_dbase(r, a, dp[j], p) * a;
  }
  return sum;
}

template <typename T> void score_backward_scalar(T* s, T* dp, int64_t n, const sa::Row<T>& r, T p) {
  for (int64_t j = 0; j < n; ++j) {
    T P = 0, ds = 0;
    sa::score_backward(r, s[j], dp[j], p, P, ds);
    s[j] = P;
    dp[j] = ds;
  }
}

// ---------------------------------------------------------------- one entry per pass: picks the form
template <typename T> T scale_max_any(T* s, int64_t n, T c) {
  if constexpr (std::is_same<T, float>::value) return n > 0 ? scale_max(s, n, c) : -INFINITY;
  return scale_max_scalar(s, n, c);
}

// Forward weights of a row under its shift: softplus (shift 0) or e^(s − shift).
template <typename T> T weights(T* s, int64_t n, T shift) {
  if constexpr (std::is_same<T, float>::value) {
    if (shift == 0.0f) return softplus_sum(s, n);
  }
  return shifted_sum_scalar(s, n, shift);
}

template <typename T> T lssar_row_terms(T* s, int64_t n, T nr, T L, T off, T M, T floor, T p) {
  if constexpr (std::is_same<T, float>::value) {
    if (L > 0.0f && M > 0.0f && integer_power(p)) return lssar_terms(s, n, nr, L, off, M, floor, static_cast<int>(p));
  }
  return lssar_terms_scalar(s, n, nr, L, off, M, floor, p);
}

// Ordinary backward row: no NaN, L > 0 (not shifted, has keys) and, for LSSAR, M > 0, integer p.
template <typename T> bool vector_row(const sa::Row<T>& r, T p) {
  if (!std::is_same<T, float>::value || !(r.L > T(0)) || r.M != r.M) return false;
  return p <= T(0) || (r.M > T(0) && integer_power(p));
}

template <typename T> T gamma_row(const T* s, const T* dp, int64_t n, const sa::Row<T>& r, T p) {
  if constexpr (std::is_same<T, float>::value) {
    if (vector_row(r, p)) return lssar_gamma(s, dp, n, r, static_cast<int>(p));
  }
  return lssar_gamma_scalar(s, dp, n, r, p);
}

template <typename T> void backward_row(T* s, T* dp, int64_t n, const sa::Row<T>& r, T p) {
  if constexpr (std::is_same<T, float>::value) {
    if (vector_row(r, p)) {
      if (p <= 0.0f) lssa_backward(s, dp, n, r.c, r.L, r.delta);
      else lssar_backward(s, dp, n, r, static_cast<int>(p));
      return;
    }
  }
  score_backward_scalar(s, dp, n, r, p);
}

}  // namespace rows
}  // namespace cpu
}  // namespace nlseq
