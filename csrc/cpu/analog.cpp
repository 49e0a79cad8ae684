// C++ CPU kernels of the analog family (docs/spec.md §3.1–3.2): the fused crossbar + NL-ADC op and the
// whole analog LSTM / GRU layer.
//
// Both reduce to the same three pieces, each a loop that vectorises (and is cloned for AVX2 and
// AVX-512, simd.h):
//   1. the DAC: quantise a row of inputs and sum the squares (the read-noise variance);
//   2. the MVM, by the BLAS GEMM torch links (MKL / OpenBLAS), the one piece that would be slower
//      written by hand here;
//   3. the row epilogue: current = acc·col_scale + σ·z with Philox normals z drawn 64 groups
//      at a time, the comparator count against the ramp thresholds, the level lookup.
// The count compares up to four rows' currents with threshold k of every column at once
// (thresholds stored transposed, [L−1, N]), so it runs across columns with contiguous loads;
// above 6 bits a per-element binary search (L − 1 compares would cost more than its bits
// dependent loads) is used. Philox and the count have hand-written AVX-512 forms (integer and
// compare instructions only, chosen at run time), the rest is left to the clones.
// The arithmetic is the one of nlseq/analog.h in the same order and without contraction, so
// the codes are those of the reference and of the CUDA kernel, bit for bit.
#include "analog.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "nlseq/analog.h"
#include "simd.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NLSEQ_X86_AVX512 1
#include <immintrin.h>
#else
#define NLSEQ_X86_AVX512 0
#endif

namespace nlseq {
namespace cpu {
namespace {

constexpr int kLinearSearchMax = 64;  // ADCs up to 6 bits count all thresholds (vectorised)
// Philox groups (of four normals) per vector pass: kGroups in the main loop, four 16-lane
// registers whose rounds interleave (one register's ten rounds are a chain of dependent
// multiplies, latency-bound), then passes of kGroupsTail, then single groups.
constexpr int kGroups = 64, kGroupsTail = 16;

// analog::philox4x32_10 on G counters at once, each round across the lanes. The auto-vectorised
// loop widens every 32×32-bit product to a 64×64-bit one (three multiplies and a repack per eight
// lanes); the AVX-512 version multiplies the even and the odd lanes once each (vpmuludq) and
// blends the halves back: the same integers, a third of the work (docs/cpu_rnn.md).
template <int G>
void philox_portable(uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) analog::philox_bump_key(k0, k1);
    for (int i = 0; i < G; ++i) analog::philox_round(c0[i], c1[i], c2[i], c3[i], k0, k1);
  }
}

#if NLSEQ_X86_AVX512
// hi, lo = the high and low words of a[i]·m for 16 lanes (m in both halves of every 64-bit lane).
__attribute__((target("avx512f"))) inline void mul_hilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  // The maskz forms with every lane on are the plain instructions; GCC 12's unmasked intrinsics
  // trip its own -Wuninitialized (an undefined pass-through operand in the header).
  const __m512i even = _mm512_maskz_mul_epu32(0xFF, a, m);  // lanes 0, 2, ..: 64-bit products
  const __m512i odd = _mm512_maskz_mul_epu32(0xFF, _mm512_maskz_srli_epi64(0xFF, a, 32), m);  // lanes 1, 3, ..
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_maskz_srli_epi64(0xFF, even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_maskz_slli_epi64(0xFF, odd, 32));
}

template <int G>
__attribute__((target("avx512f"))) void philox_avx512(uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3,
                                                      uint32_t k0, uint32_t k1) {
  static_assert(G % 16 == 0, "philox_avx512: whole 16-lane registers");
  constexpr int V = G / 16;
  __m512i x0[V], x1[V], x2[V], x3[V];
  for (int j = 0; j < V; ++j) {
    x0[j] = _mm512_loadu_si512(c0 + 16 * j);
    x1[j] = _mm512_loadu_si512(c1 + 16 * j);
    x2[j] = _mm512_loadu_si512(c2 + 16 * j);
    x3[j] = _mm512_loadu_si512(c3 + 16 * j);
  }
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int r = 0; r < 10; ++r) {  // analog::philox_round, word for word
    if (r) analog::philox_bump_key(k0, k1);
    const __m512i kk0 = _mm512_set1_epi32(static_cast<int>(k0)), kk1 = _mm512_set1_epi32(static_cast<int>(k1));
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) {
      __m512i hi0, lo0, hi1, lo1;
      mul_hilo16(x0[j], m0, hi0, lo0);
      mul_hilo16(x2[j], m1, hi1, lo1);
      const __m512i n0 = _mm512_ternarylogic_epi32(hi1, x1[j], kk0, 0x96);
      const __m512i n2 = _mm512_ternarylogic_epi32(hi0, x3[j], kk1, 0x96);
      x1[j] = lo1;
      x3[j] = lo0;
      x0[j] = n0;
      x2[j] = n2;
    }
  }
  for (int j = 0; j < V; ++j) {
    _mm512_storeu_si512(c0 + 16 * j, x0[j]);
    _mm512_storeu_si512(c1 + 16 * j, x1[j]);
    _mm512_storeu_si512(c2 + 16 * j, x2[j]);
    _mm512_storeu_si512(c3 + 16 * j, x3[j]);
  }
}

bool has_avx512() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}
#endif

template <int G>
inline void philox_lanes(uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3, uint32_t k0, uint32_t k1) {
#if NLSEQ_X86_AVX512
  if (has_avx512()) return philox_avx512<G>(c0, c1, c2, c3, k0, k1);
#endif
  philox_portable<G>(c0, c1, c2, c3, k0, k1);
}

// The 4·G normals of groups q .. q + G − 1 into z: Philox across the lanes, then Box–Muller
// across the lanes (loops the clones vectorise), then interleaved into stream order. Inlined
// into fill_normals, so it is compiled for each of its clones.
template <int G>
__attribute__((always_inline)) inline void normal_groups(uint64_t q, uint32_t off0, uint32_t off1, uint32_t key0,
                                                         uint32_t key1, float* z) {
  uint32_t c0[G], c1[G], c2[G], c3[G];
  for (int i = 0; i < G; ++i) {
    c0[i] = static_cast<uint32_t>(q + i);
    c1[i] = static_cast<uint32_t>((q + i) >> 32);
    c2[i] = off0;
    c3[i] = off1;
  }
  philox_lanes<G>(c0, c1, c2, c3, key0, key1);
  float zc0[G], zs0[G], zc1[G], zs1[G];
  for (int i = 0; i < G; ++i) analog::box_muller(c0[i], c1[i], zc0[i], zs0[i]);
  for (int i = 0; i < G; ++i) analog::box_muller(c2[i], c3[i], zc1[i], zs1[i]);
  for (int i = 0; i < G; ++i) {
    z[4 * i] = zc0[i];
    z[4 * i + 1] = zs0[i];
    z[4 * i + 2] = zc1[i];
    z[4 * i + 3] = zs1[i];
  }
}

// z[0, count) = normals begin .. begin + count − 1 of the stream (seed, offset). Full groups
// run kGroups (then kGroupsTail) at a time; partial groups at either end take the scalar
// normal_quad. Same values as normal_at.
NLSEQ_CLONES void fill_normals(uint64_t seed, uint64_t offset, int64_t begin, int64_t count, float* z) {
  int64_t e = begin;
  const int64_t end = begin + count;
  if ((e & 3) != 0) {
    float w[4];
    analog::normal_quad(seed, offset, static_cast<uint64_t>(e >> 2), w);
    for (; e < end && (e & 3) != 0; ++e) *z++ = w[e & 3];
  }
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t off0 = static_cast<uint32_t>(offset), off1 = static_cast<uint32_t>(offset >> 32);
  for (; end - e >= 4 * kGroups; e += 4 * kGroups, z += 4 * kGroups)
    normal_groups<kGroups>(static_cast<uint64_t>(e >> 2), off0, off1, key0, key1, z);
  for (; end - e >= 4 * kGroupsTail; e += 4 * kGroupsTail, z += 4 * kGroupsTail)
    normal_groups<kGroupsTail>(static_cast<uint64_t>(e >> 2), off0, off1, key0, key1, z);
  while (e < end) {
    float w[4];
    analog::normal_quad(seed, offset, static_cast<uint64_t>(e >> 2), w);
    for (int j = 0; j < 4 && e < end; ++j, ++e) *z++ = w[j];
  }
}

// DAC-quantise n inputs into q; returns Σ q².
NLSEQ_CLONES float dac_row(const float* x, int64_t n, const analog::Dac& dac, float* q) {
  float ssq = 0.0f;
  for (int64_t k = 0; k < n; ++k) {
    q[k] = analog::dac_quantize(x[k], dac);
    ssq += q[k] * q[k];
  }
  return ssq;
}

// The NL-ADCs of N columns: thresholds [N, L−1], their transpose [L−1, N] when L − 1 is small
// enough to count linearly, levels [N, L].
struct Ramp {
  const float* thr;
  std::vector<float> thr_t;
  const float* lev;
  int64_t N;
  int L;

  Ramp(const float* thr_, const float* lev_, int64_t N_, int L_) : thr(thr_), lev(lev_), N(N_), L(L_) {
    if (linear()) {  // in blocks of 16 columns: the reads stay in a few cache lines, the writes run
      thr_t.resize(static_cast<size_t>((L - 1) * N));  // along rows (the column-major store loop
      for (int64_t n0 = 0; n0 < N; n0 += 16)           // cost ~35 µs of the layer's fixed cost)
        for (int k = 0; k < L - 1; ++k)
          for (int64_t n = n0; n < std::min<int64_t>(N, n0 + 16); ++n) thr_t[k * N + n] = thr[n * (L - 1) + k];
    }
  }
  // Whether count_row counts against every threshold (thr_t) rather than binary-searching thr.
  bool linear() const { return L - 1 <= kLinearSearchMax; }
};

// Comparator counts of R rows of currents u [R, N]: code[r, n] = #{k : u[r, n] > thr[n, k]}.
// Linear count: a block of kCountRows × kCountCols currents stays in registers while the
// thresholds of those columns stream past once for all the block's rows (one pass over the
// [L−1, N] table for every kCountRows rows, not one per row: 63 KB at 4H = 512, 5 bits).
constexpr int kCountRows = 4, kCountCols = 16;

#if NLSEQ_X86_AVX512
static_assert(kCountRows == 4 && kCountCols == 16, "count4_avx512 holds four rows of one 16-lane register");

// count_rows' 4-row block over the columns [0, cols), cols a multiple of 16: a compare into a
// mask and a masked subtract of −1 per row and threshold (the auto-vectorised loop spends a
// third instruction turning the mask into a vector). _CMP_GT_OQ is C's `>`: false on a NaN.
__attribute__((target("avx512f"))) void count4_avx512(const float* u, int64_t N, int64_t cols, const float* thr_t,
                                                      int K, int32_t* code) {
  const __m512i minus1 = _mm512_set1_epi32(-1);
  for (int64_t n0 = 0; n0 < cols; n0 += kCountCols) {
    const __m512 u0 = _mm512_loadu_ps(u + n0), u1 = _mm512_loadu_ps(u + N + n0);
    const __m512 u2 = _mm512_loadu_ps(u + 2 * N + n0), u3 = _mm512_loadu_ps(u + 3 * N + n0);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
    for (int k = 0; k < K; ++k) {
      const __m512 t = _mm512_loadu_ps(thr_t + k * N + n0);
      c0 = _mm512_mask_sub_epi32(c0, _mm512_cmp_ps_mask(u0, t, _CMP_GT_OQ), c0, minus1);
      c1 = _mm512_mask_sub_epi32(c1, _mm512_cmp_ps_mask(u1, t, _CMP_GT_OQ), c1, minus1);
      c2 = _mm512_mask_sub_epi32(c2, _mm512_cmp_ps_mask(u2, t, _CMP_GT_OQ), c2, minus1);
      c3 = _mm512_mask_sub_epi32(c3, _mm512_cmp_ps_mask(u3, t, _CMP_GT_OQ), c3, minus1);
    }
    _mm512_storeu_si512(code + n0, c0);
    _mm512_storeu_si512(code + N + n0, c1);
    _mm512_storeu_si512(code + 2 * N + n0, c2);
    _mm512_storeu_si512(code + 3 * N + n0, c3);
  }
}
#endif

NLSEQ_CLONES void count_rows(const float* u, int64_t R, const Ramp& ramp, int32_t* code) {
  const int64_t N = ramp.N;
  const int K = ramp.L - 1;
  if (!ramp.linear()) {
    for (int64_t m = 0; m < R * N; ++m) code[m] = analog::ramp_code(u[m], ramp.thr + (m % N) * K, ramp.L);
    return;
  }
  const float* thr_t = ramp.thr_t.data();
  int64_t r0 = 0;
  for (; r0 + kCountRows <= R; r0 += kCountRows) {
    const float* ub = u + r0 * N;
    int32_t* cb = code + r0 * N;
    int64_t n0 = 0;
#if NLSEQ_X86_AVX512
    if (has_avx512()) {
      n0 = N / kCountCols * kCountCols;
      count4_avx512(ub, N, n0, thr_t, K, cb);
    }
#endif
    for (; n0 + kCountCols <= N; n0 += kCountCols) {
      float uu[kCountRows][kCountCols];
      int32_t cnt[kCountRows][kCountCols];
      for (int r = 0; r < kCountRows; ++r)
        for (int i = 0; i < kCountCols; ++i) {
          uu[r][i] = ub[r * N + n0 + i];
          cnt[r][i] = 0;
        }
      for (int k = 0; k < K; ++k) {
        const float* t = thr_t + k * N + n0;
        for (int r = 0; r < kCountRows; ++r)
          for (int i = 0; i < kCountCols; ++i) cnt[r][i] += static_cast<int32_t>(uu[r][i] > t[i]);
      }
      for (int r = 0; r < kCountRows; ++r)
        for (int i = 0; i < kCountCols; ++i) cb[r * N + n0 + i] = cnt[r][i];
    }
    for (int r = 0; r < kCountRows; ++r)  // the last columns
      for (int64_t n = n0; n < N; ++n) {
        int32_t cnt = 0;
        for (int k = 0; k < K; ++k) cnt += static_cast<int32_t>(ub[r * N + n] > thr_t[k * N + n]);
        cb[r * N + n] = cnt;
      }
  }
  for (; r0 < R; ++r0) {  // the last rows, one at a time
    const float* ur = u + r0 * N;
    int32_t* cr = code + r0 * N;
    int64_t n0 = 0;
    for (; n0 + kCountCols <= N; n0 += kCountCols) {
      float uu[kCountCols];
      int32_t cnt[kCountCols];
      for (int i = 0; i < kCountCols; ++i) {
        uu[i] = ur[n0 + i];
        cnt[i] = 0;
      }
      for (int k = 0; k < K; ++k) {
        const float* t = thr_t + k * N + n0;
        for (int i = 0; i < kCountCols; ++i) cnt[i] += static_cast<int32_t>(uu[i] > t[i]);
      }
      for (int i = 0; i < kCountCols; ++i) cr[n0 + i] = cnt[i];
    }
    for (int64_t n = n0; n < N; ++n) {
      int32_t cnt = 0;
      for (int k = 0; k < K; ++k) cnt += static_cast<int32_t>(ur[n] > thr_t[k * N + n]);
      cr[n] = cnt;
    }
  }
}

// R rows of the fused epilogue: out[r, n] = lev[n, code(u[r, n])], u = acc[r, n]·cs[n] + σ[r]·z[r, n]
// (z == nullptr: noise off). u and code are scratch [R, N]; out may be acc.
NLSEQ_CLONES void adc_rows(const float* acc, int64_t R, const float* cs, const float* sigma, const float* z,
                           const Ramp& ramp, float* u, int32_t* code, float* out) {
  const int64_t N = ramp.N;
  for (int64_t r = 0; r < R; ++r) {
    const float* a = acc + r * N;
    float* ur = u + r * N;
    for (int64_t n = 0; n < N; ++n) ur[n] = a[n] * cs[n];
    if (z != nullptr) {
      const float s = sigma[r];
      const float* zr = z + r * N;
      for (int64_t n = 0; n < N; ++n) ur[n] = ur[n] + s * zr[n];
    }
  }
  count_rows(u, R, ramp, code);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n)
      out[r * N + n] = analog::adc_level(u[r * N + n], ramp.lev + n * ramp.L, code[r * N + n]);
}

// The LSTM cell update of R batch rows (torch gate order i, f, g, o in g[r, 0, 4H)):
// c = f⊙c + i⊙g, h = o⊙tanh_adc(c); the tanh ADC is the one ramp of H columns with shared levels.
// c, h, out [R, H].
NLSEQ_CLONES void lstm_cell_rows(const float* g, int64_t R, const Ramp& cell, const float* cell_levels, float* c,
                                 float* h, int32_t* code, float* out) {
  const int64_t H = cell.N;
  for (int64_t r = 0; r < R; ++r) {
    const float* gr = g + r * 4 * H;
    float* cr = c + r * H;
    for (int64_t j = 0; j < H; ++j) cr[j] = gr[H + j] * cr[j] + gr[j] * gr[2 * H + j];
  }
  count_rows(c, R, cell, code);
  for (int64_t r = 0; r < R; ++r) {
    const float* gr = g + r * 4 * H;
    for (int64_t j = 0; j < H; ++j) {
      h[r * H + j] = gr[3 * H + j] * analog::adc_level(c[r * H + j], cell_levels, code[r * H + j]);
      out[r * H + j] = h[r * H + j];
    }
  }
}

// The GRU cell update of R batch rows (gate columns r, z, xn, hn in g[r, 0, 4H), AnalogGRU's
// crossbar): n = tanh_adc(xn + r⊙hn), h = (1 − z)⊙n + z⊙h, in the step path's order of operations.
// h, v (scratch), out [R, H].
NLSEQ_CLONES void gru_cell_rows(const float* g, int64_t R, const Ramp& cell, const float* cell_levels, float* h,
                                float* v, int32_t* code, float* out) {
  const int64_t H = cell.N;
  for (int64_t r = 0; r < R; ++r) {
    const float* gr = g + r * 4 * H;
    for (int64_t j = 0; j < H; ++j) v[r * H + j] = gr[2 * H + j] + gr[j] * gr[3 * H + j];
  }
  count_rows(v, R, cell, code);
  for (int64_t r = 0; r < R; ++r) {
    const float* gr = g + r * 4 * H;
    for (int64_t j = 0; j < H; ++j) {
      const float z = gr[H + j];
      h[r * H + j] = (1.0f - z) * analog::adc_level(v[r * H + j], cell_levels, code[r * H + j]) + z * h[r * H + j];
      out[r * H + j] = h[r * H + j];
    }
  }
}

}  // namespace

void analog_mvm_fwd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                    const at::Tensor& thresholds, const at::Tensor& levels, const c10::optional<at::Tensor>& noise,
                    int64_t in_bits, double x_max, double noise_a, double noise_b, int64_t seed, int64_t offset,
                    at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  const int L = static_cast<int>(levels.size(1));
  const analog::Dac dac = analog::Dac::make(static_cast<int>(in_bits), x_max);
  const bool noisy = noise_a != 0.0 || noise_b != 0.0;
  const float na = static_cast<float>(noise_a), nb = static_cast<float>(noise_b);

  // 1. DAC and per-row noise std.
  at::Tensor xq = at::empty({M, K}, x.options());
  std::vector<float> sigma(M, 0.0f);
  const float* px = x.data_ptr<float>();
  float* pq = xq.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float ssq = dac_row(px + m * K, K, dac, pq + m * K);
      if (noisy) sigma[m] = sqrtf(ssq * na + nb);
    }
  });

  // 2. MVM.
  at::mm_out(y, xq, weight.t());

  // 3. Epilogue, in place on y (each row reads its accumulators into u before writing).
  const Ramp ramp(thresholds.data_ptr<float>(), levels.data_ptr<float>(), N, L);
  float* py = y.data_ptr<float>();
  const float* pc = col_scale.data_ptr<float>();
  const float* pz = noise.has_value() ? noise->data_ptr<float>() : nullptr;
  at::parallel_for(0, M, std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1)), [&](int64_t m0, int64_t m1) {
    std::vector<float> u(N), z(noisy && pz == nullptr ? N : 0);
    std::vector<int32_t> code(N);
    for (int64_t m = m0; m < m1; ++m) {
      const float* zr = nullptr;
      if (noisy) {
        if (pz != nullptr) {
          zr = pz + m * N;
        } else {
          fill_normals(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), m * N, N, z.data());
          zr = z.data();
        }
      }
      adc_rows(py + m * N, 1, pc, &sigma[m], zr, ramp, u.data(), code.data(), py + m * N);
    }
  });
}

namespace {

// out [R, N] = c [R, N] + a [R, K] @ w [K, N], all row-major. The per-step h half of the LSTM's
// product is 8×128 @ 128×512: too small for the BLAS call to pay its dispatch and threading
// (≈ 17 µs measured against ≈ 6 µs here), and this one runs inside a thread's own batch rows.
// Register tile kGemmRows × kGemmCols; every output sums over k in order, then adds c.
// Multiply-adds are contracted here (the file is built with -ffp-contract=off for the epilogue's
// exact order): this product is the BLAS GEMM's counterpart, which fuses them as well, and the
// ADC codes only match bit for bit where every sum is exact (docs/cpu_rnn.md), fused or not.
// A fused multiply-add halves the instructions of the step's largest piece of work.
constexpr int kGemmRows = 4, kGemmCols = 32;

__attribute__((optimize("fp-contract=fast"))) NLSEQ_CLONES void gemm_add(const float* a, int64_t R, int64_t K, const float* w, int64_t N, const float* c,
                           float* out) {
  int64_t r0 = 0;
  for (; r0 + kGemmRows <= R; r0 += kGemmRows) {
    int64_t n0 = 0;
    for (; n0 + kGemmCols <= N; n0 += kGemmCols) {
      float acc[kGemmRows][kGemmCols] = {};
      for (int64_t k = 0; k < K; ++k) {
        const float* wk = w + k * N + n0;
#pragma GCC unroll 4
        for (int r = 0; r < kGemmRows; ++r) {
          const float ar = a[(r0 + r) * K + k];
          for (int i = 0; i < kGemmCols; ++i) acc[r][i] += ar * wk[i];
        }
      }
      for (int r = 0; r < kGemmRows; ++r)
        for (int i = 0; i < kGemmCols; ++i) out[(r0 + r) * N + n0 + i] = c[(r0 + r) * N + n0 + i] + acc[r][i];
    }
    for (int64_t r = r0; r < r0 + kGemmRows; ++r)  // the last columns
      for (int64_t n = n0; n < N; ++n) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) acc += a[r * K + k] * w[k * N + n];
        out[r * N + n] = c[r * N + n] + acc;
      }
  }
  for (; r0 < R; ++r0) {  // the last rows, one at a time
    float* o = out + r0 * N;
    for (int64_t n = 0; n < N; ++n) o[n] = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float ak = a[r0 * K + k];
      const float* wk = w + k * N;
      for (int64_t n = 0; n < N; ++n) o[n] += ak * wk[n];
    }
    for (int64_t n = 0; n < N; ++n) o[n] = c[r0 * N + n] + o[n];
  }
}

struct RnnLayer {
  bool gru;            // the GRU cell update (no c), else the LSTM's
  const float* acc_x;  // [T·B, 4H]: the input half of every step's product, bias included
  const float* ssq_x;  // [T·B]: Σ DAC(x)² of each row, DAC(1)² of the bias included
  const float* w_h_t;  // [H, 4H]
  const float* col_scale;
  const Ramp* ramp;    // the gates' NL-ADCs (4H columns)
  const Ramp* cell;    // the tanh ADC of c (H columns)
  const float* cell_levels;
  analog::Dac dac;
  float na, nb;
  bool noisy;
  uint64_t seed, offset;
  int64_t T, B, H;
};

// Batch rows [b0, b1) over all T steps: they never meet the other rows, so each thread of the
// layer runs its own rows from start to end with no synchronisation per step. c (LSTM only) and
// h hold the rows' state on entry and on exit; out is [T, B, H].
void rnn_rows(const RnnLayer& p, int64_t b0, int64_t b1, float* c, float* h, float* out) {
  const int64_t R = b1 - b0, H = p.H, N = 4 * H, B = p.B;
  std::vector<float> hq(R * H), acc(R * N), u(R * N), v(R * H), sigma(R), z(p.noisy ? R * N : 0);
  std::vector<int32_t> code(R * N);
  for (int64_t t = 0; t < p.T; ++t) {
    for (int64_t r = 0; r < R; ++r) {
      const float s = dac_row(h + r * H, H, p.dac, hq.data() + r * H);
      sigma[r] = p.noisy ? sqrtf((p.ssq_x[t * B + b0 + r] + s) * p.na + p.nb) : 0.0f;
    }
    gemm_add(hq.data(), R, H, p.w_h_t, N, p.acc_x + (t * B + b0) * N, acc.data());
    // The step's normals are elements b·4H + n of the stream (seed, offset + t).
    if (p.noisy) fill_normals(p.seed, p.offset + static_cast<uint64_t>(t), b0 * N, R * N, z.data());
    // All R rows at once: the gates' levels overwrite acc, then the cell update.
    adc_rows(acc.data(), R, p.col_scale, sigma.data(), p.noisy ? z.data() : nullptr, *p.ramp, u.data(), code.data(),
             acc.data());
    float* o = out + (t * B + b0) * H;
    if (p.gru) {
      gru_cell_rows(acc.data(), R, *p.cell, p.cell_levels, h, v.data(), code.data(), o);
    } else {
      lstm_cell_rows(acc.data(), R, *p.cell, p.cell_levels, c, h, code.data(), o);
    }
  }
}

}  // namespace

// The input half of every step's product does not depend on h, so it is one GEMM for all T
// steps up front (the bias row, driven at DAC(1), rides along); each step then adds hq @ W_hᵀ
// (gemm_add) and runs the epilogue and the cell update row by row. Threads split the batch.
void analog_rnn_fwd(bool gru, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                    const at::Tensor& thresholds, const at::Tensor& levels, const at::Tensor& cell_thresholds,
                    const at::Tensor& cell_levels, const at::Tensor& h0, const at::Tensor& c0, int64_t in_bits,
                    double x_max, double noise_a, double noise_b, int64_t seed, int64_t offset, at::Tensor& out,
                    at::Tensor& h_n, at::Tensor& c_n) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), N = weight.size(0), H = N / 4;
  const analog::Dac dac = analog::Dac::make(static_cast<int>(in_bits), x_max);

  // One parallel pass does the DAC of every input row (xq [T·B, I]) and starts its accumulator
  // row at the bias (acc_x = DAC(1)·w_bias), and transposes the h half of the weight (w_h_t
  // [H, 4H], k-major for gemm_add): indices [0, T·B) are input rows, the next H/kTransposeRows
  // blocks of w_h_t rows. Torch's cat and strided copy of the weight, which this replaces, cost
  // ~50 µs a call (docs/cpu_rnn.md).
  constexpr int64_t kTransposeRows = 16;
  at::Tensor xq = at::empty({T * B, I}, x.options());
  at::Tensor acc_x = at::empty({T * B, N}, x.options());
  at::Tensor w_h_t = at::empty({H, N}, x.options());
  std::vector<float> ssq_x(T * B);
  {
    const float one = analog::dac_quantize(1.0f, dac);  // the bias row is driven at DAC(1)
    const float* px = x.data_ptr<float>();
    const float* pw = weight.data_ptr<float>();
    float* pq = xq.data_ptr<float>();
    float* pa = acc_x.data_ptr<float>();
    float* pt = w_h_t.data_ptr<float>();
    const int64_t K = weight.size(1), blocks = (H + kTransposeRows - 1) / kTransposeRows;
    std::vector<float> bias(N);
    for (int64_t n = 0; n < N; ++n) bias[n] = one * pw[n * K + I + H];
    at::parallel_for(0, T * B + blocks, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        if (i < T * B) {
          ssq_x[i] = dac_row(px + i * I, I, dac, pq + i * I) + one * one;
          std::copy(bias.begin(), bias.end(), pa + i * N);
          continue;
        }
        const int64_t k0 = (i - T * B) * kTransposeRows, k1 = std::min(H, k0 + kTransposeRows);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = k0; k < k1; ++k) pt[k * N + n] = pw[n * K + I + k];
      }
    });
  }
  // Input half for all steps: acc_x += xq @ W_xᵀ, the x columns read in place from the weight
  // (the BLAS takes the row stride). The bias sits outside the BLAS sum, which changes no code:
  // the codes match the step path's only where every sum is exact (docs/cpu_rnn.md).
  at::addmm_out(acc_x, acc_x, xq, weight.narrow(1, 0, I).t());

  const Ramp ramp(thresholds.data_ptr<float>(), levels.data_ptr<float>(), N, static_cast<int>(levels.size(1)));
  const Ramp cell(cell_thresholds.data_ptr<float>(), nullptr, H, static_cast<int>(cell_levels.size(0)));
  RnnLayer p;
  p.gru = gru;
  p.acc_x = acc_x.data_ptr<float>();
  p.ssq_x = ssq_x.data();
  p.w_h_t = w_h_t.data_ptr<float>();
  p.col_scale = col_scale.data_ptr<float>();
  p.ramp = &ramp;
  p.cell = &cell;
  p.cell_levels = cell_levels.data_ptr<float>();
  p.dac = dac;
  p.na = static_cast<float>(noise_a);
  p.nb = static_cast<float>(noise_b);
  p.noisy = noise_a != 0.0 || noise_b != 0.0;
  p.seed = static_cast<uint64_t>(seed);
  p.offset = static_cast<uint64_t>(offset);
  p.T = T;
  p.B = B;
  p.H = H;
  float* pc = gru ? nullptr : c_n.data_ptr<float>();
  float* ph = h_n.data_ptr<float>();
  if (!gru) std::copy(c0.data_ptr<float>(), c0.data_ptr<float>() + B * H, pc);
  std::copy(h0.data_ptr<float>(), h0.data_ptr<float>() + B * H, ph);
  float* pout = out.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    rnn_rows(p, b0, b1, gru ? nullptr : pc + b0 * H, ph + b0 * H, pout);
  });
}

}  // namespace cpu
}  // namespace nlseq
