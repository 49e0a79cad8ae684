// C++ CPU kernel of the fused analog crossbar + NL-ADC op (SPEC.md §3.1–3.2).
//
// One pass per row block, three stages:
//   1. DAC-quantise the rows of x into xq and their sums of squares (the read-noise variance);
//   2. the MVM xq @ weightᵀ by the BLAS GEMM torch links (MKL / OpenBLAS), the one piece that
//      would be slower written by hand here;
//   3. the fused epilogue in place: current, Philox noise, binary search over the ramp
//      thresholds, level lookup (nlseq/analog.h, the same code the CUDA kernel runs).
#include "analog.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "nlseq/analog.h"

namespace nlseq {
namespace cpu {

void analog_mvm_fwd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                    const at::Tensor& thresholds, const at::Tensor& levels, const c10::optional<at::Tensor>& noise,
                    int64_t in_bits, double x_max, double noise_a, double noise_b, int64_t seed, int64_t offset,
                    at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0), L = levels.size(1);
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
      float ssq = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const float q = analog::dac_quantize(px[m * K + k], dac);
        pq[m * K + k] = q;
        ssq += q * q;
      }
      if (noisy) sigma[m] = sqrtf(ssq * na + nb);
    }
  });

  // 2. MVM.
  at::mm_out(y, xq, weight.t());

  // 3. Epilogue, in place on y.
  float* py = y.data_ptr<float>();
  const float* pc = col_scale.data_ptr<float>();
  const float* pt = thresholds.data_ptr<float>();
  const float* pl = levels.data_ptr<float>();
  const float* pz = noise.has_value() ? noise->data_ptr<float>() : nullptr;
  const uint64_t useed = static_cast<uint64_t>(seed), uoff = static_cast<uint64_t>(offset);
  const int iL = static_cast<int>(L);
  at::parallel_for(0, M, std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1)), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      float* row = py + m * N;
      if (!noisy) {
        for (int64_t n = 0; n < N; ++n) row[n] = analog::adc_epilogue(row[n], pc[n], 0.0f, 0.0f, pt + n * (L - 1), pl + n * L, iL);
        continue;
      }
      const float s = sigma[m];
      if (pz != nullptr) {
        for (int64_t n = 0; n < N; ++n)
          row[n] = analog::adc_epilogue(row[n], pc[n], s, pz[m * N + n], pt + n * (L - 1), pl + n * L, iL);
        continue;
      }
      float z[4];
      for (int64_t n = 0; n < N; ++n) {
        const uint64_t e = static_cast<uint64_t>(m * N + n);
        if (n == 0 || (e & 3) == 0) analog::normal_quad(useed, uoff, e >> 2, z);
        row[n] = analog::adc_epilogue(row[n], pc[n], s, z[e & 3], pt + n * (L - 1), pl + n * L, iL);
      }
    }
  });
}

}  // namespace cpu
}  // namespace nlseq

namespace nlseq {
namespace cpu {

constexpr int kLinearSearchMax = 64;  // ADCs up to 6 bits count all thresholds (vectorised)

// z[begin..end) = normals begin..end−1 of the stream (seed, offset); begin is a multiple of 4.
void fill_normals(uint64_t seed, uint64_t offset, int64_t begin, int64_t end, float* z) {
  const int64_t full = end / 4;
  for (int64_t q = begin / 4; q < full; ++q) {
    float w[4];
    analog::normal_quad(seed, offset, static_cast<uint64_t>(q), w);
    z[4 * q] = w[0];
    z[4 * q + 1] = w[1];
    z[4 * q + 2] = w[2];
    z[4 * q + 3] = w[3];
  }
  if (full * 4 < end) {
    float w[4];
    analog::normal_quad(seed, offset, static_cast<uint64_t>(full), w);
    for (int64_t e = full * 4; e < end; ++e) z[e] = w[e - full * 4];
  }
}
  // ADCs up to 6 bits count all thresholds (vectorised)

// The input half of every step's product does not depend on h, so it is one GEMM for all T
// steps up front (the bias row, driven at DAC(1), rides along); each step then adds hq @ W_hᵀ
// and runs the epilogue and the cell update in one pass over the batch. The step loop stays on
// one thread: at B·4H = 4096 outputs per step, a parallel region per step costs more than it
// saves on a shared 2-core machine (measured); the BLAS calls use torch's threads.
void analog_lstm_fwd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                     const at::Tensor& thresholds, const at::Tensor& levels, const at::Tensor& cell_thresholds,
                     const at::Tensor& cell_levels, const at::Tensor& h0, const at::Tensor& c0, int64_t in_bits,
                     double x_max, double noise_a, double noise_b, int64_t seed, int64_t offset, at::Tensor& out,
                     at::Tensor& h_n, at::Tensor& c_n) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), N = weight.size(0), H = N / 4;
  const int64_t L = levels.size(1), Lc = cell_levels.size(0);
  const analog::Dac dac = analog::Dac::make(static_cast<int>(in_bits), x_max);
  const bool noisy = noise_a != 0.0 || noise_b != 0.0;
  const float na = static_cast<float>(noise_a), nb = static_cast<float>(noise_b);
  const uint64_t useed = static_cast<uint64_t>(seed);

  // Input half for all steps: xq1 [T·B, I+1] (last column DAC(1)) @ [W_x | w_bias]ᵀ.
  at::Tensor xq1 = at::empty({T * B, I + 1}, x.options());
  std::vector<float> ssq_x(T * B);
  {
    const float* px = x.data_ptr<float>();
    float* pq = xq1.data_ptr<float>();
    const float one = analog::dac_quantize(1.0f, dac);
    for (int64_t r = 0; r < T * B; ++r) {
      float s = 0.0f;
      for (int64_t k = 0; k < I; ++k) {
        const float q = analog::dac_quantize(px[r * I + k], dac);
        pq[r * (I + 1) + k] = q;
        s += q * q;
      }
      pq[r * (I + 1) + I] = one;
      ssq_x[r] = s + one * one;
    }
  }
  at::Tensor w_x = at::cat({weight.narrow(1, 0, I), weight.narrow(1, I + H, 1)}, 1);
  at::Tensor w_h_t = weight.narrow(1, I, H).t().contiguous();  // [H, 4H]
  at::Tensor acc_x = at::mm(xq1, w_x.t());                     // [T·B, 4H]

  at::Tensor hq = at::empty({B, H}, x.options());
  at::Tensor acc = at::empty({B, N}, x.options());
  std::vector<float> c(c0.data_ptr<float>(), c0.data_ptr<float>() + B * H);
  std::vector<float> h(h0.data_ptr<float>(), h0.data_ptr<float>() + B * H);
  std::vector<float> gates(B * N), sigma(B), zbuf(noisy ? B * N : 0);
  const float* pc = col_scale.data_ptr<float>();
  const float* pt = thresholds.data_ptr<float>();
  const float* pl = levels.data_ptr<float>();
  const float* pct = cell_thresholds.data_ptr<float>();
  const float* pcl = cell_levels.data_ptr<float>();
  float* pout = out.data_ptr<float>();
  const int iL = static_cast<int>(L), iLc = static_cast<int>(Lc);

  for (int64_t t = 0; t < T; ++t) {
    float* phq = hq.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      float s = 0.0f;
      for (int64_t j = 0; j < H; ++j) {
        const float q = analog::dac_quantize(h[b * H + j], dac);
        phq[b * H + j] = q;
        s += q * q;
      }
      sigma[b] = noisy ? sqrtf((ssq_x[t * B + b] + s) * na + nb) : 0.0f;
    }
    at::mm_out(acc, hq, w_h_t);  // the h half; the input half is added in the epilogue
    const float* pacc = acc.data_ptr<float>();
    const float* pacc_x = acc_x.data_ptr<float>() + t * B * N;
    const uint64_t uoff = static_cast<uint64_t>(offset + t);
    if (noisy) {  // the step's B·4H normals, four per Philox call, in stream order
      fill_normals(useed, uoff, 0, B * N, zbuf.data());
    }
    // Column-outer loops: a column's ramp thresholds stay in L1 while the batch passes through.
    for (int64_t n = 0; n < N; ++n) {
      const float* thr = pt + n * (L - 1);
      const float* lev = pl + n * L;
      const float cs = pc[n];
      for (int64_t b = 0; b < B; ++b) {
        const float current = (pacc_x[b * N + n] + pacc[b * N + n]) * cs + sigma[b] * (noisy ? zbuf[b * N + n] : 0.0f);
        gates[b * N + n] = lev[iL <= kLinearSearchMax ? analog::ramp_code_linear(current, thr, iL)
                                                      : analog::ramp_code(current, thr, iL)];
      }
    }
    for (int64_t j = 0; j < H; ++j) {  // torch gate order i, f, g, o
      const float* thr = pct + j * (Lc - 1);
      for (int64_t b = 0; b < B; ++b) {
        const float* g = gates.data() + b * N;
        const float cn = g[H + j] * c[b * H + j] + g[j] * g[2 * H + j];
        c[b * H + j] = cn;
        const int code = iLc <= kLinearSearchMax ? analog::ramp_code_linear(cn, thr, iLc) : analog::ramp_code(cn, thr, iLc);
        const float hn = g[3 * H + j] * pcl[code];
        h[b * H + j] = hn;
        pout[(t * B + b) * H + j] = hn;
      }
    }
  }
  std::copy(h.begin(), h.end(), h_n.data_ptr<float>());
  std::copy(c.begin(), c.end(), c_n.data_ptr<float>());
}

}  // namespace cpu
}  // namespace nlseq
