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
      float z0 = 0.0f, z1 = 0.0f;
      for (int64_t n = 0; n < N; ++n) {
        const uint64_t e = static_cast<uint64_t>(m * N + n);
        if (n == 0 || (e & 1) == 0) analog::normal_pair(useed, uoff, e >> 1, z0, z1);
        const float z = (e & 1) ? z1 : z0;
        row[n] = analog::adc_epilogue(row[n], pc[n], s, z, pt + n * (L - 1), pl + n * L, iL);
      }
    }
  });
}

}  // namespace cpu
}  // namespace nlseq
