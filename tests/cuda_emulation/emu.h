// CPU emulation of the few CUDA features the nlseq kernels use, so that the CUDA code of
// csrc/cuda/*.cu runs (slowly) on a machine without a GPU: blocks run one at a time, one
// std::thread per CUDA thread, std::barrier for __syncthreads and for warp shuffles, __shared__
// variables become function statics (shared by the block's threads), dynamic shared memory is a
// NaN-filled buffer, and the runtime queries answer for a small GPU (EMU_SMS multiprocessors,
// default 4, two resident blocks each) so that the multi-block paths are taken at small sizes.
// tests/test_cuda_emulation.py rewrites each `kernel<<<grid, block, smem, stream>>>(args)` into
// `::emu::launch(kernel, grid, block, smem, stream, args)` and compiles the result with g++.
// What it checks: indexing, bounds, barriers, the split/segment logic and the arithmetic. What it
// cannot: timing, coalescing, occupancy, and races that only real hardware would expose
// (a missing barrier still shows here only when the threads happen to interleave badly).
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <barrier>
#include <thread>
#include <vector>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <memory>

#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline

namespace emu {
inline thread_local uint3 tIdx, bIdx;
inline dim3 bDim, gDim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline float shfl_buf[1024];
inline std::vector<float> dyn_smem;
inline int sms() { const char* s = std::getenv("EMU_SMS"); return s ? std::atoi(s) : 4; }
inline long launches = 0;

template <class Kernel, class... Args>
void launch(Kernel k, dim3 grid, dim3 block, size_t smem, cudaStream_t, Args... args) {
  ++launches;
  bDim = block; gDim = grid;
  const unsigned nt = block.x;
  dyn_smem.assign(smem / 4 + 4, std::nanf(""));
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> bar(nt);
      block_barrier = &bar;
      warp_barriers.clear();
      for (unsigned w = 0; w < (nt + 31) / 32; ++w) warp_barriers.emplace_back(new std::barrier<>(std::min(32u, nt - 32 * w)));
      std::vector<std::thread> th;
      for (unsigned t = 0; t < nt; ++t)
        th.emplace_back([&, t] { tIdx = {t, 0, 0}; bIdx = {bx, by, 0}; k(args...); });
      for (auto& x : th) x.join();
    }
}
inline cudaError_t emu_cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t emu_cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = sms(); return cudaSuccess; }
template <class F> cudaError_t emu_cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int, size_t) { *n = 2; return cudaSuccess; }
template <class F> cudaError_t emu_cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t emu_cudaGetLastError() { return cudaSuccess; }
inline const char* emu_cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
}  // namespace emu

#undef threadIdx
#undef blockIdx
#define threadIdx (::emu::tIdx)
#define blockIdx (::emu::bIdx)
#define cudaGetDevice ::emu::emu_cudaGetDevice
#define cudaDeviceGetAttribute ::emu::emu_cudaDeviceGetAttribute
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor ::emu::emu_cudaOccupancyMaxActiveBlocksPerMultiprocessor
#define cudaFuncSetAttribute ::emu::emu_cudaFuncSetAttribute
#define cudaGetLastError ::emu::emu_cudaGetLastError
#define cudaGetErrorString ::emu::emu_cudaGetErrorString

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }  // the CUDA intrinsic
inline float __shfl_xor_sync(unsigned, float x, int o) {
  const unsigned t = threadIdx.x;
  auto& b = *emu::warp_barriers[t / 32];
  emu::shfl_buf[t] = x;
  b.arrive_and_wait();
  const float y = emu::shfl_buf[t ^ o];
  b.arrive_and_wait();
  return y;
}
using std::max;  // nvcc's device min/max overloads for integers
using std::min;
