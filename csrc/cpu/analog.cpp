// C++ CPU kernels of the analog family (docs/spec.md §3.1–3.2): the fused crossbar + NL-ADC op and the
// whole analog LSTM / GRU layer.
//
// Both reduce to the same three pieces, each a loop that vectorises (and is cloned for AVX2 and
// AVX-512, simd.h):
//   1. the DAC: quantise a row of inputs and sum the squares (the read-noise variance);
//   2. the MVM, by the BLAS GEMM torch links (MKL / OpenBLAS), the one piece that would be slower
//      written by hand here;
//   3. the row epilogue: current = acc·col_scale + σ·z with Philox normals z drawn sixteen
//      groups at a time, the comparator count against the ramp thresholds, the level lookup.
// The count compares a row's currents with threshold k of every column at once (thresholds
// stored transposed, [L−1, N]), so it runs across columns with contiguous loads; above 6 bits a
// per-element binary search (L − 1 compares would cost more than its bits dependent loads) is used.
// The arithmetic is the one of nlseq/analog.h in the same order and without contraction, so
// the codes are those of the reference and of the CUDA kernel, bit for bit.
#include "analog.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "nlseq/analog.h"
#include "simd.h"

namespace nlseq {
namespace cpu {
namespace {

constexpr int kLinearSearchMax = 64;  // ADCs up to 6 bits count all thresholds (vectorised)
constexpr int kGroups = 16;           // Philox groups (of four normals) per vector pass

// z[0, count) = normals begin .. begin + count − 1 of the stream (seed, offset). Full groups
// run kGroups at a time with every round a loop over lanes (one vector op per instruction);
// partial groups at either end take the scalar normal_quad. Same values as normal_at.
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
  for (; end - e >= 4 * kGroups; e += 4 * kGroups, z += 4 * kGroups) {
    const uint64_t q = static_cast<uint64_t>(e >> 2);
    uint32_t c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
    for (int i = 0; i < kGroups; ++i) {
      c0[i] = static_cast<uint32_t>(q + i);
      c1[i] = static_cast<uint32_t>((q + i) >> 32);
      c2[i] = off0;
      c3[i] = off1;
    }
    uint32_t k0 = key0, k1 = key1;
    for (int r = 0; r < 10; ++r) {  // analog::philox4x32_10, each round across the lanes
      if (r) analog::philox_bump_key(k0, k1);
      for (int i = 0; i < kGroups; ++i) analog::philox_round(c0[i], c1[i], c2[i], c3[i], k0, k1);
    }
    float zc0[kGroups], zs0[kGroups], zc1[kGroups], zs1[kGroups];
    for (int i = 0; i < kGroups; ++i) analog::box_muller(c0[i], c1[i], zc0[i], zs0[i]);
    for (int i = 0; i < kGroups; ++i) analog::box_muller(c2[i], c3[i], zc1[i], zs1[i]);
    for (int i = 0; i < kGroups; ++i) {
      z[4 * i] = zc0[i];
      z[4 * i + 1] = zs0[i];
      z[4 * i + 2] = zc1[i];
      z[4 * i + 3] = zs1[i];
    }
  }
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
    if (linear()) {
      thr_t.resize(static_cast<size_t>((L - 1) * N));
      for (int64_t n = 0; n < N; ++n)
        for (int k = 0; k < L - 1; ++k) thr_t[k * N + n] = thr[n * (L - 1) + k];
    }
  }
  // Whether count_row counts against every threshold (thr_t) rather than binary-searching thr.
  bool linear() const { return L - 1 <= kLinearSearchMax; }
};

// Comparator counts of one row of currents: code[n] = #{k : u[n] > thr[n, k]}. Linear count:
// a chunk of kCountCols currents stays in registers while the thresholds stream past.
constexpr int kCountCols = 32;

NLSEQ_CLONES void count_row(const float* u, const Ramp& ramp, int32_t* code) {
  const int64_t N = ramp.N;
  const int K = ramp.L - 1;
  if (!ramp.linear()) {
    for (int64_t n = 0; n < N; ++n) code[n] = analog::ramp_code(u[n], ramp.thr + n * K, ramp.L);
    return;
  }
  const float* thr_t = ramp.thr_t.data();
  int64_t n0 = 0;
  for (; n0 + kCountCols <= N; n0 += kCountCols) {
    float uu[kCountCols];
    int32_t cnt[kCountCols];
    for (int i = 0; i < kCountCols; ++i) {
      uu[i] = u[n0 + i];
      cnt[i] = 0;
    }
    for (int k = 0; k < K; ++k) {
      const float* t = thr_t + k * N + n0;
      for (int i = 0; i < kCountCols; ++i) cnt[i] += static_cast<int32_t>(uu[i] > t[i]);
    }
    for (int i = 0; i < kCountCols; ++i) code[n0 + i] = cnt[i];
  }
  for (int64_t n = n0; n < N; ++n) {
    int32_t cnt = 0;
    for (int k = 0; k < K; ++k) cnt += static_cast<int32_t>(u[n] > thr_t[k * N + n]);
    code[n] = cnt;
  }
}

// One row of the fused epilogue: out[n] = lev[n, code(u[n])], u = acc[n]·cs[n] + σ·z[n]
// (z == nullptr: noise off). u and code are scratch rows of N; out may be acc.
NLSEQ_CLONES void adc_row(const float* acc, const float* cs, float sigma, const float* z, const Ramp& ramp, float* u,
                          int32_t* code, float* out) {
  const int64_t N = ramp.N;
  for (int64_t n = 0; n < N; ++n) u[n] = acc[n] * cs[n];
  if (z != nullptr) {
    for (int64_t n = 0; n < N; ++n) u[n] = u[n] + sigma * z[n];
  }
  count_row(u, ramp, code);
  for (int64_t n = 0; n < N; ++n) out[n] = analog::adc_level(u[n], ramp.lev + n * ramp.L, code[n]);
}

// The LSTM cell update of one batch row (torch gate order i, f, g, o in g[0, 4H)):
// c = f⊙c + i⊙g, h = o⊙tanh_adc(c); the tanh ADC is the one ramp of H columns with shared levels.
NLSEQ_CLONES void lstm_cell_row(const float* g, const Ramp& cell, const float* cell_levels, float* c, float* h,
                                int32_t* code, float* out) {
  const int64_t H = cell.N;
  for (int64_t j = 0; j < H; ++j) c[j] = g[H + j] * c[j] + g[j] * g[2 * H + j];
  count_row(c, cell, code);
  for (int64_t j = 0; j < H; ++j) {
    h[j] = g[3 * H + j] * analog::adc_level(c[j], cell_levels, code[j]);
    out[j] = h[j];
  }
}

// The GRU cell update of one batch row (gate columns r, z, xn, hn in g[0, 4H), AnalogGRU's
// crossbar): n = tanh_adc(xn + r⊙hn), h = (1 − z)⊙n + z⊙h, in the step path's order of operations.
NLSEQ_CLONES void gru_cell_row(const float* g, const Ramp& cell, const float* cell_levels, float* h, float* v,
                               int32_t* code, float* out) {
  const int64_t H = cell.N;
  for (int64_t j = 0; j < H; ++j) v[j] = g[2 * H + j] + g[j] * g[3 * H + j];
  count_row(v, cell, code);
  for (int64_t j = 0; j < H; ++j) {
    const float z = g[H + j];
    h[j] = (1.0f - z) * analog::adc_level(v[j], cell_levels, code[j]) + z * h[j];
    out[j] = h[j];
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
      adc_row(py + m * N, pc, sigma[m], zr, ramp, u.data(), code.data(), py + m * N);
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
  std::vector<float> hq(R * H), acc(R * N), gates(N), u(N), v(H), sigma(R), z(p.noisy ? R * N : 0);
  std::vector<int32_t> code(N);
  for (int64_t t = 0; t < p.T; ++t) {
    for (int64_t r = 0; r < R; ++r) {
      const float s = dac_row(h + r * H, H, p.dac, hq.data() + r * H);
      sigma[r] = p.noisy ? sqrtf((p.ssq_x[t * B + b0 + r] + s) * p.na + p.nb) : 0.0f;
    }
    gemm_add(hq.data(), R, H, p.w_h_t, N, p.acc_x + (t * B + b0) * N, acc.data());
    // The step's normals are elements b·4H + n of the stream (seed, offset + t).
    if (p.noisy) fill_normals(p.seed, p.offset + static_cast<uint64_t>(t), b0 * N, R * N, z.data());
    for (int64_t r = 0; r < R; ++r) {
      adc_row(acc.data() + r * N, p.col_scale, sigma[r], p.noisy ? z.data() + r * N : nullptr, *p.ramp,
              u.data(), code.data(), gates.data());
      float* o = out + (t * B + b0 + r) * H;
      if (p.gru) {
        gru_cell_row(gates.data(), *p.cell, p.cell_levels, h + r * H, v.data(), code.data(), o);
      } else {
        lstm_cell_row(gates.data(), *p.cell, p.cell_levels, c + r * H, h + r * H, code.data(), o);
      }
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

  // Input half for all steps: xq1 [T·B, I+1] (last column DAC(1)) @ [W_x | w_bias]ᵀ.
  at::Tensor xq1 = at::empty({T * B, I + 1}, x.options());
  std::vector<float> ssq_x(T * B);
  {
    const float* px = x.data_ptr<float>();
    float* pq = xq1.data_ptr<float>();
    const float one = analog::dac_quantize(1.0f, dac);
    at::parallel_for(0, T * B, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float s = dac_row(px + r * I, I, dac, pq + r * (I + 1));
        pq[r * (I + 1) + I] = one;
        ssq_x[r] = s + one * one;
      }
    });
  }
  at::Tensor w_x = at::cat({weight.narrow(1, 0, I), weight.narrow(1, I + H, 1)}, 1);
  at::Tensor w_h_t = weight.narrow(1, I, H).t().contiguous();  // [H, 4H]
  at::Tensor acc_x = at::mm(xq1, w_x.t());                     // [T·B, 4H]

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
