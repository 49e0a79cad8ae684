// Row-major GEMMs on raw pointers for the CPU kernels' small tile products.
//
// The kernels multiply many small tiles (a 128 x 256 x 64 score tile is ~4 MFLOP, ~20 µs on one
// core). Going through ATen for each one (from_blob tensors, the dispatcher, shape checks) costs
// microseconds per call, 10–25 % of such a product measured on the 2-core Xeon. So the tile
// products call the BLAS that torch links (MKL's Fortran sgemm_/dgemm_, exported by
// libtorch_cpu) directly. The symbols are weak: a torch built without them (another BLAS, or
// none) leaves them null, and the same products then go through at::mm_out / addmm_. Inside a
// parallel region both run single-threaded (the BLAS does not nest OpenMP).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace nlseq {
namespace cpu {
namespace blas {

// C [m, n] = A·B + beta·C with A [m, kk] (or [kk, m] when ta: A is read transposed) and B [kk, n]
// (or [n, kk] when tb), all row-major and contiguous. beta is 0 or 1.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t kk, const T* A, const T* B, T beta, T* C) {
  if (m == 0 || n == 0) return;
  if (kk == 0) {  // an empty sum (the BLAS also rejects a leading dimension of 0)
    if (beta == T(0)) std::fill(C, C + m * n, T(0));
    return;
  }
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  const bool fortran = std::is_same<T, float>::value ? sgemm_ != nullptr : dgemm_ != nullptr;
  if (fortran && m < kMax && n < kMax && kk < kMax) {
    // row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(kk);
    const int lda = static_cast<int>(tb ? kk : n), ldb = static_cast<int>(ta ? m : kk), ldc = static_cast<int>(n);
    const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
    const T one = 1;
    if constexpr (std::is_same<T, float>::value)
      sgemm_(&opa, &opb, &M, &N, &K, &one, B, &lda, A, &ldb, &beta, C, &ldc);
    else
      dgemm_(&opa, &opb, &M, &N, &K, &one, B, &lda, A, &ldb, &beta, C, &ldc);
    return;
  }
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = ta ? at::from_blob(const_cast<T*>(A), {kk, m}, opt).t() : at::from_blob(const_cast<T*>(A), {m, kk}, opt);
  at::Tensor b = tb ? at::from_blob(const_cast<T*>(B), {n, kk}, opt).t() : at::from_blob(const_cast<T*>(B), {kk, n}, opt);
  at::Tensor c = at::from_blob(C, {m, n}, opt);
  if (beta == T(0))
    at::mm_out(c, a, b);
  else
    c.addmm_(a, b);
}

}  // namespace blas
}  // namespace cpu
}  // namespace nlseq
