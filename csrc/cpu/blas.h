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
#include <initializer_list>
#include <limits>
#include <type_traits>

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

// Whether torch's BLAS entry point for T (float, double) was found when the library loaded.
template <typename T>
bool available() {
  if constexpr (std::is_same<T, float>::value) return sgemm_ != nullptr;
  if constexpr (std::is_same<T, double>::value) return dgemm_ != nullptr;
  return false;
}

// Whether every size and leading dimension fits the BLAS's 32-bit int.
inline bool fits_int(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims)
    if (d > std::numeric_limits<int>::max()) return false;
  return true;
}

// Row-major C [m, n] (leading dimension ldc) = op(A)·op(B) + beta·C with op(A) [m, kk] and
// op(B) [kk, n]; ta / tb: A is stored [kk, m] / B is stored [n, kk] (leading dimensions lda,
// ldb of the stored arrays). Needs available<T>() and fits_int of every size; kk >= 1. The
// row-major C is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so the operands are swapped.
template <typename T>
void gemm_ld(bool ta, bool tb, int64_t m, int64_t n, int64_t kk, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc) {
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(kk);
  const int la = static_cast<int>(std::max<int64_t>(1, ldb)), lb = static_cast<int>(std::max<int64_t>(1, lda)),
            lc = static_cast<int>(std::max<int64_t>(1, ldc));
  const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
  const T one = 1;
  if constexpr (std::is_same<T, float>::value)
    sgemm_(&opa, &opb, &M, &N, &K, &one, B, &la, A, &lb, &beta, C, &lc);
  else
    dgemm_(&opa, &opb, &M, &N, &K, &one, B, &la, A, &lb, &beta, C, &lc);
}

// The same on contiguous operands (leading dimensions the row lengths), beta 0 or 1, through
// at::mm_out / addmm_ where the BLAS entry point is missing or a size does not fit an int.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t kk, const T* A, const T* B, T beta, T* C) {
  if (m == 0 || n == 0) return;
  if (kk == 0) {  // an empty sum (the BLAS also rejects a leading dimension of 0)
    if (beta == T(0)) std::fill(C, C + m * n, T(0));
    return;
  }
  if (available<T>() && fits_int({m, n, kk})) {
    gemm_ld<T>(ta, tb, m, n, kk, A, ta ? m : kk, B, tb ? kk : n, beta, C, n);
    return;
  }
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  T* a_ptr = const_cast<T*>(A);
  T* b_ptr = const_cast<T*>(B);
  at::Tensor a = ta ? at::from_blob(a_ptr, {kk, m}, opt).t() : at::from_blob(a_ptr, {m, kk}, opt);
  at::Tensor b = tb ? at::from_blob(b_ptr, {n, kk}, opt).t() : at::from_blob(b_ptr, {kk, n}, opt);
  at::Tensor c = at::from_blob(C, {m, n}, opt);
  if (beta == T(0))
    at::mm_out(c, a, b);
  else
    c.addmm_(a, b);
}

}  // namespace blas
}  // namespace cpu
}  // namespace nlseq
