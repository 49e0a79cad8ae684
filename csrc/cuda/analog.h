// CUDA kernel of the fused analog crossbar + NL-ADC op (docs/spec.md §3): raw pointers and a stream,
// no torch headers. Validation and allocation happen in csrc/torch/analog.cpp.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace nlseq {
namespace cuda {

struct AnalogMvmArgs {
  const float* x;           // [M, K]
  const float* weight;      // [N, K] programmed weights, digital units
  const float* col_scale;   // [N] µA per digital unit
  const float* thresholds;  // [N, L-1] µA, non-decreasing per column
  const float* levels;      // [N, L]
  const float* noise;       // [M, N] standard normals, or nullptr for in-kernel Philox
  float* y;                 // [M, N]
  int64_t M, K, N;
  int L;
  int in_bits;
  double x_max;
  float noise_a, noise_b;
  uint64_t seed, offset;
};

// Launches the fused kernel on `stream`; returns the launch error (cudaSuccess when fine), or
// cudaErrorInvalidValue when ceil(N / 64) passes the grid's x limit (2^31 − 1). M is unbounded:
// gridDim.y (at most 65535 row tiles of 64) is tiled over analog_mvm_fwd_launches(M) launches.
cudaError_t analog_mvm_fwd(const AnalogMvmArgs& args, cudaStream_t stream);
int64_t analog_mvm_fwd_launches(int64_t M);

}  // namespace cuda
}  // namespace nlseq
