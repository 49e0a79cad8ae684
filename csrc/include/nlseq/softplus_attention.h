// Torch-free math of softplus attention (docs/spec.md §2), shared by the CPU and CUDA kernels.
//
// Row i sees N_i keys; c_i = ln D · ln N_i; s_ij = c_i q̂_i·k̂_j; w_ij = softplus(s_ij);
// L_i = Σ_j w_ij. LSSA weights w/L. LSSAR weights ReLU(N_i w/L − O_i)^p renormalised, computed as
// (ReLU(base)/M_i)^p with M_i the row's largest base (from the row max of s: softplus is
// monotonic), so no term exceeds 1 and (N a)^p is never formed.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"

namespace nlseq {
namespace softplus_attention {

// An LSSAR row whose largest base N_i·max_j a_ij − O_i is <= this is an all-zero row (o_i = 0):
// float32 row sums cannot resolve the sign of a base this close to 0 (identical keys give 0).
constexpr double kZeroRowTol = 1e-4;

// log(1 + e^x), accurate for every x (log1p keeps the relative error small for x << 0).
template <typename T> NLSEQ_HD T softplus(T x) {
  return (x > T(0) ? x : T(0)) + std::log1p(std::exp(-std::fabs(x)));
}

template <typename T> NLSEQ_HD T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// Underflow-safe rows (docs/numerics.md). With qk_norm=False scores are unbounded; when every
// visible score of a row is below about -104, float32 softplus(s) ≈ e^s underflows to 0 and the
// row would come back 0 instead of its weighted mean. A row whose largest score m is below
// kShiftBelow is therefore shifted, FlashAttention style: its weights are e^(s − m) (equal to
// softplus(s)·e^(−m) to within e^kShiftBelow relative, far below float64 rounding), the largest
// one exactly 1. Ordinary rows (m >= kShiftBelow, every row under qk_norm with ln D·ln N < 40)
// keep softplus(s) bit for bit. The row statistic L_i stores which form a row used: L_i > 0 is
// Σ_j softplus(s_ij); L_i < 0 is ln Σ_j softplus(s_ij) = m + ln Σ_j e^(s − m) (< 0 since the row
// sum is < N e^-40 < 1); L_i = 0 is a row without keys. Every weight is then read through
// weight_over_sum / sigmoid_over_sum, so no backend stores the shift separately.
constexpr double kShiftBelow = -40.0;

// The shift of a row whose running max of visible scores is m: m when finite and below
// kShiftBelow, else 0 (no shift; NaN falls here too and stays NaN through softplus).
template <typename T> NLSEQ_HD T row_shift(T m) { return (m < T(kShiftBelow) && m > -T(INFINITY)) ? m : T(0); }

// The weight of score s under a row shift (softplus(s) when shift == 0).
template <typename T> NLSEQ_HD T shifted_weight(T s, T shift) {
  return shift < T(0) ? std::exp(s - shift) : softplus(s);
}

// L_i as stored from the shifted row sum: the sum itself, or its logarithm for a shifted row.
template <typename T> NLSEQ_HD T stored_sum(T sum, T shift) { return shift < T(0) ? std::log(sum) + shift : sum; }

// a = softplus(s) / L_i and g = σ(s) / L_i (the weight and its derivative over the row sum) from
// the stored L_i; for a shifted row both are e^(s − L_i) (σ(s) = e^s for s < −40).
template <typename T> NLSEQ_HD T weight_over_sum(T s, T L) { return L < T(0) ? std::exp(s - L) : softplus(s) / L; }
template <typename T> NLSEQ_HD T sigmoid_over_sum(T s, T L) { return L < T(0) ? std::exp(s - L) : sigmoid(s) / L; }

// Number of keys local query row i may see: causal rows see keys j <= i + kv_offset (j < len_k).
// kv_offset < 0 (context parallelism: a key block that starts after the row) may leave none.
NLSEQ_HD int64_t visible_count(int64_t i, int64_t len_k, bool causal, int64_t kv_offset) {
  if (!causal) return len_k;
  const int64_t n = i + 1 + kv_offset;
  return n < 0 ? 0 : (n < len_k ? n : len_k);
}

// N_i of local row i: the visible count, or, with a global row-length offset n_offset >= 0 (the
// keys are one block of a longer sequence: context parallelism), N_i = n_offset + i + 1 for causal
// rows (n_offset = global position of row 0) and N_i = n_offset for non-causal rows (the key count).
NLSEQ_HD int64_t row_length(int64_t i, int64_t visible, bool causal, int64_t n_offset) {
  if (n_offset < 0) return visible;
  return causal ? n_offset + i + 1 : n_offset;
}

// c_i = ln D · ln N_i (0 for N_i <= 1).
template <typename T> NLSEQ_HD T length_scale(T log_d, int64_t n) {
  return n > 1 ? log_d * std::log(static_cast<T>(n)) : T(0);
}

// O_i: 0 for the first three positions (N_i <= 3), else 1.
template <typename T> NLSEQ_HD T reweight_offset(int64_t n) { return n > 3 ? T(1) : T(0); }

// M_i, the row's largest LSSAR base N_i softplus(m_i) / L_i − O_i from the row max m_i of s;
// 0 marks an all-zero row (no visible key, or M_i <= kZeroRowTol). L as stored (see above).
// NaN (a NaN score in the row: L or the row max is NaN) stays NaN, so the row's output is NaN
// like LSSA's instead of the all-zero row a failed comparison would make of it (issue 12).
template <typename T> NLSEQ_HD T lssar_base_max(T row_max_s, T L, int64_t n) {
  if (L != L || row_max_s != row_max_s) return L + row_max_s;  // NaN
  if (L == T(0)) return T(0);
  const T M = static_cast<T>(n) * weight_over_sum(row_max_s, L) - reweight_offset<T>(n);
  return M > static_cast<T>(kZeroRowTol) ? M : T(0);
}

// t^p for t >= 0 (0 for t <= 0): the re-weighted term with t = ReLU(base) / M_i in [0, 1].
// Integer p up to 64 (the paper's p = 15, and p − 1 in the backward) by repeated squaring: a few
// multiplications instead of a log and an exp; other p through exp(p log t).
template <typename T> NLSEQ_HD T pow_ratio(T t, T p) {
  if (!(t > T(0))) return T(0);
  if (p >= T(0) && p <= T(64) && p == static_cast<T>(static_cast<int>(p))) {
    T r = T(1), b = t;
    for (int n = static_cast<int>(p); n != 0; n >>= 1) {
      if (n & 1) r *= b;
      b *= b;
    }
    return r;
  }
  return std::exp(p * std::log(t));
}

// A lower bound on the scores s whose LSSAR base N softplus(s) / L − O can be positive: for
// O = 1, base > 0 ⇔ softplus(s) > L / N ⇔ s > log(expm1(L / N)); lowered by a relative margin
// so that rounding never skips a positive base. −inf when O = 0 (every base is positive).
// For a shifted row (L < 0): base > 0 ⇔ e^(s − L) > 1 / N ⇔ s > L − ln N.
template <typename T> NLSEQ_HD T lssar_score_floor(T L, int64_t n) {
  if (n <= 3 || L == T(0) || L != L) return -INFINITY;
  // log(expm1(r)) = r + log1p(−e^−r): r itself past r = 20 (e^−20 is below float rounding of r),
  // where float32 expm1 would overflow (r > 88.7, qk_norm=False) and make every base 0
  const T r = L / static_cast<T>(n);
  const T x = L < T(0) ? L - std::log(static_cast<T>(n)) : (r > T(20) ? r : std::log(std::expm1(r)));
  return x - T(1e-3) * (std::fabs(x) + T(1));
}

// One score's weight P_ij and gradient ds_ij·c_i in the backward, from the row statistics,
// with a = w / L and g = σ(s) / L (weight_over_sum, sigmoid_over_sum):
//   LSSA:  P = a,                        ds = g (dP − Δ)
//   LSSAR: t = ReLU(N a − O) / M,        P = t^p / R,
//          dbase = (dP − Δ) p t^(p−1) / (M R),   ds = g N (dbase − Γ)
// with Δ_i = do_i·o_i and Γ_i = Σ_j dbase_ij a_ij (a pass of its own, see lssar_dbase).
template <typename T> struct Row {
  T c, n, offset, L, M, R, delta, gamma;  // c_i, N_i, O_i, L_i, M_i, R_i, Δ_i, Γ_i
};

template <typename T> NLSEQ_HD T lssar_dbase(const Row<T>& r, T a, T dP, T p) {
  if (!(r.M > T(0))) return T(0);
  const T base = r.n * a - r.offset;
  if (!(base > T(0))) return T(0);
  const T t = base / r.M;
  return (dP - r.delta) * p * pow_ratio(t, p - T(1)) / (r.M * r.R);
}

template <typename T> NLSEQ_HD void score_backward(const Row<T>& r, T s, T dP, T p, T& P, T& ds) {
  if (r.L != r.L || r.M != r.M) { P = r.L + r.M; ds = P; return; }  // a NaN row stays NaN (issue 12)
  if (r.L == T(0)) { P = T(0); ds = T(0); return; }  // a row without keys
  const T a = weight_over_sum(s, r.L);
  if (p <= T(0)) {
    P = a;
    ds = r.c * sigmoid_over_sum(s, r.L) * (dP - r.delta);
    return;
  }
  if (!(r.M > T(0))) { P = T(0); ds = T(0); return; }
  const T base = r.n * a - r.offset;
  const T t = base > T(0) ? base / r.M : T(0);
  P = pow_ratio(t, p) / r.R;
  ds = r.c * sigmoid_over_sum(s, r.L) * r.n * (lssar_dbase(r, a, dP, p) - r.gamma);
}

}  // namespace softplus_attention
}  // namespace nlseq
