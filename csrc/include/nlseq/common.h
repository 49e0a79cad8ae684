// Torch-free helpers shared by the CPU (g++) and CUDA (nvcc) kernels.
#pragma once
#include <cstdint>

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

// Largest of x[0..n) and 0 (the values are residual magnitudes), with NaN winning: once a NaN is
// seen it is the result. The tempting `if (!(x <= m)) m = x;` lets the element after a NaN
// overwrite it, so a NaN residual came back as the next finite value (issue 12).
template <typename T> NLSEQ_HD T nan_max(const T* x, int64_t n) {
  T m = T(0);
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] != x[i]) return x[i];
    if (x[i] > m) m = x[i];
  }
  return m;
}

}  // namespace nlseq
