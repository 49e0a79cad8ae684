// Torch-free helpers shared by the CPU (g++) and CUDA (nvcc) kernels.
#pragma once

#if defined(__CUDACC__)
#define NLSEQ_HD __host__ __device__ __forceinline__
#define NLSEQ_UNROLL _Pragma("unroll")
#else
#define NLSEQ_HD inline
#define NLSEQ_UNROLL _Pragma("GCC unroll 4")
#endif

namespace nlseq {

// Accumulation type: double stays double; float, half and bfloat16 accumulate in float.
template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <typename T> using acc_t = typename acc_type<T>::type;

}  // namespace nlseq
