// CUDA kernel of the fused analog crossbar + NL-ADC op (docs/spec.md §3.1–3.2).
//
// One thread block computes a BM×BN tile of y with a register-tiled fp32 GEMM: each K-slab of x
// is DAC-quantised as it is staged in shared memory (and its squares summed per row for the
// read-noise variance), weights are staged alongside, and every thread accumulates a TM×TN
// micro-tile. The epilogue runs in registers: current, Philox normal (nlseq/analog.h, the same
// stream as the CPU kernel), binary search over the column's ramp thresholds, level lookup.
#include "analog.h"
#include "nlseq/analog.h"

namespace nlseq {
namespace cuda {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
constexpr int kThreads = (BM / TM) * (BN / TN);  // 256
#ifndef NLSEQ_ANALOG_MAX_GRID_Y  // a smaller value only for the CPU emulation test (tiling at small M)
#define NLSEQ_ANALOG_MAX_GRID_Y 65535
#endif
constexpr int64_t kMaxGridY = NLSEQ_ANALOG_MAX_GRID_Y;  // gridDim.y limit (row tiles per launch)
constexpr int64_t kMaxGridX = 0x7fffffff;  // gridDim.x limit (column tiles)

__global__ void __launch_bounds__(kThreads)
analog_mvm_fwd_kernel(const AnalogMvmArgs a, const analog::Dac dac, const bool noisy, const int64_t m_tile0) {
  __shared__ float s_x[BK][BM + 4];  // quantised x, transposed: [k][m]
  __shared__ float s_w[BK][BN + 4];  // weights, transposed: [k][n]
  __shared__ float s_ssq[BM];

  const int tid = threadIdx.x;
  const int tm = tid / (BN / TN), tn = tid % (BN / TN);
  // blockIdx.y counts row tiles from m_tile0: the launcher tiles M in slabs of kMaxGridY row tiles
  const int64_t m0 = (m_tile0 + static_cast<int64_t>(blockIdx.y)) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t M = a.M, N = a.N, K = a.K;

  float acc[TM][TN];
  NLSEQ_UNROLL
  for (int i = 0; i < TM; ++i)
    NLSEQ_UNROLL
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  float ssq = 0.0f;  // row m0 + tid for tid < BM, summed in k order

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    // Stage BK×BM of x (quantised) and BK×BN of weight: 1024 elements each, 4 per thread.
    NLSEQ_UNROLL
    for (int r = 0; r < (BM * BK) / kThreads; ++r) {
      const int idx = tid + r * kThreads;
      const int mm = idx / BK, kk = idx % BK;
      const int64_t gm = m0 + mm, gk = k0 + kk;
      s_x[kk][mm] = (gm < M && gk < K) ? analog::dac_quantize(a.x[gm * K + gk], dac) : 0.0f;
      const int64_t gn = n0 + mm;
      s_w[kk][mm] = (gn < N && gk < K) ? a.weight[gn * K + gk] : 0.0f;
    }
    __syncthreads();
    if (noisy && tid < BM) {
      for (int kk = 0; kk < BK; ++kk) ssq += s_x[kk][tid] * s_x[kk][tid];
    }
    NLSEQ_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      float xr[TM], wr[TN];
      NLSEQ_UNROLL
      for (int i = 0; i < TM; ++i) xr[i] = s_x[kk][tm * TM + i];
      NLSEQ_UNROLL
      for (int j = 0; j < TN; ++j) wr[j] = s_w[kk][tn * TN + j];
      NLSEQ_UNROLL
      for (int i = 0; i < TM; ++i)
        NLSEQ_UNROLL
        for (int j = 0; j < TN; ++j) acc[i][j] += xr[i] * wr[j];
    }
    __syncthreads();
  }
  if (tid < BM) s_ssq[tid] = ssq;
  __syncthreads();

  const int L = a.L;
  NLSEQ_UNROLL
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + tm * TM + i;
    if (m >= M) continue;
    const float sigma = noisy ? __fsqrt_rn(__fadd_rn(__fmul_rn(s_ssq[tm * TM + i], a.noise_a), a.noise_b)) : 0.0f;
    const int64_t nb = n0 + tn * TN;
    float z[TN];
    const bool quad = noisy && a.noise == nullptr && ((m * N + nb) & 3) == 0;
    if (quad) {
      float q[4];
      analog::normal_quad(a.seed, a.offset, static_cast<uint64_t>(m * N + nb) >> 2, q);
      NLSEQ_UNROLL
      for (int j = 0; j < TN; ++j) z[j] = q[j];
    }
    NLSEQ_UNROLL
    for (int j = 0; j < TN; ++j) {
      const int64_t n = nb + j;
      if (n >= N) continue;
      float zj = 0.0f;
      if (noisy) {
        if (a.noise != nullptr) zj = a.noise[m * N + n];
        else zj = quad ? z[j] : analog::normal_at(a.seed, a.offset, static_cast<uint64_t>(m * N + n));
      }
      // __fmul_rn/__fadd_rn keep nvcc from contracting into FMAs: the same roundings as the CPU.
      const float current = __fadd_rn(__fmul_rn(acc[i][j], a.col_scale[n]), __fmul_rn(sigma, zj));
      a.y[m * N + n] = analog::adc_level(current, a.levels + n * L, analog::ramp_code(current, a.thresholds + n * (L - 1), L));
    }
  }
}

}  // namespace

cudaError_t analog_mvm_fwd(const AnalogMvmArgs& args, cudaStream_t stream) {
  const analog::Dac dac = analog::Dac::make(args.in_bits, args.x_max);
  const bool noisy = args.noise_a != 0.0f || args.noise_b != 0.0f;
  const int64_t n_tiles = (args.N + BN - 1) / BN, m_tiles = (args.M + BM - 1) / BM;
  if (n_tiles > kMaxGridX) return cudaErrorInvalidValue;  // N > 2^37: the binding rejects it first
  // gridDim.y is at most 65535: row tiles beyond that run in further launches (M > 4,194,240)
  for (int64_t t0 = 0; t0 < m_tiles; t0 += kMaxGridY) {
    const int64_t count = m_tiles - t0 < kMaxGridY ? m_tiles - t0 : kMaxGridY;
    const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(count));
    analog_mvm_fwd_kernel<<<grid, kThreads, 0, stream>>>(args, dac, noisy, t0);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

int64_t analog_mvm_fwd_launches(int64_t M) { return ((M + BM - 1) / BM + kMaxGridY - 1) / kMaxGridY; }

}  // namespace cuda
}  // namespace nlseq
