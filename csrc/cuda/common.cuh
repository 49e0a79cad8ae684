// Device helpers shared by the CUDA kernels (nvcc only): element-type conversions and a switch
// from the runtime DType to a compile-time element type.
//
// torch's extension build compiles .cu files with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, so every conversion below is an explicit intrinsic.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace nlseq {
namespace cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round-to-nearest-even from float32 to the output type.
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace nlseq

// Maps a runtime nlseq::cuda::DType to the element type TNAME inside the lambda body (host code).
#define NLSEQ_DTYPE_SWITCH(DTYPE, TNAME, ...)                                                     \
  [&] {                                                                                          \
    switch (DTYPE) {                                                                             \
      case ::nlseq::cuda::DType::kFloat32: { using TNAME = float; return __VA_ARGS__(); }        \
      case ::nlseq::cuda::DType::kBFloat16: { using TNAME = __nv_bfloat16; return __VA_ARGS__(); } \
      case ::nlseq::cuda::DType::kFloat16: { using TNAME = __half; return __VA_ARGS__(); }      \
    }                                                                                            \
    throw std::invalid_argument("nlseq: unsupported CUDA dtype code " + std::to_string(static_cast<int>(DTYPE))); \
  }()
