// Linear-recurrence math shared by the CPU and CUDA scan kernels (docs/spec.md §1.1).
//
// One step is the affine map h -> A h + b with A a KxK block (K = 1 is the diagonal case).
// Steps compose associatively: (A2, b2) ∘ (A1, b1) = (A2 A1, A2 b1 + b2), "apply 1, then 2".
#pragma once
#include "nlseq/common.h"

namespace nlseq {
namespace scan {

constexpr int kMaxBlock = 4;  // largest K the compiled kernels are instantiated for

template <int K, typename T>
struct Affine {
  T A[K][K];
  T b[K];

  NLSEQ_HD static Affine identity() {
    Affine e;
NLSEQ_UNROLL
    for (int i = 0; i < K; ++i) {
      e.b[i] = T(0);
NLSEQ_UNROLL
      for (int j = 0; j < K; ++j) e.A[i][j] = T(i == j);
    }
    return e;
  }
};

// y = A x + b for one KxK block.
template <int K, typename T>
NLSEQ_HD void affine_apply(const T (&A)[K][K], const T (&b)[K], const T (&x)[K], T (&y)[K]) {
NLSEQ_UNROLL
  for (int i = 0; i < K; ++i) {
    T s = b[i];
NLSEQ_UNROLL
    for (int j = 0; j < K; ++j) s += A[i][j] * x[j];
    y[i] = s;
  }
}

// (second ∘ first): apply `first`, then `second`.
template <int K, typename T>
NLSEQ_HD Affine<K, T> compose(const Affine<K, T>& second, const Affine<K, T>& first) {
  Affine<K, T> r;
NLSEQ_UNROLL
  for (int i = 0; i < K; ++i) {
    T s = second.b[i];
NLSEQ_UNROLL
    for (int j = 0; j < K; ++j) {
      s += second.A[i][j] * first.b[j];
      T m = T(0);
NLSEQ_UNROLL
      for (int l = 0; l < K; ++l) m += second.A[i][l] * first.A[l][j];
      r.A[i][j] = m;
    }
    r.b[i] = s;
  }
  return r;
}

// y = Aᵀ x (the backward recurrence uses transposed blocks, docs/spec.md §1.2).
template <int K, typename T>
NLSEQ_HD void transpose_apply(const T (&A)[K][K], const T (&x)[K], T (&y)[K]) {
NLSEQ_UNROLL
  for (int j = 0; j < K; ++j) {
    T s = T(0);
NLSEQ_UNROLL
    for (int i = 0; i < K; ++i) s += A[i][j] * x[i];
    y[j] = s;
  }
}

}  // namespace scan
}  // namespace nlseq

// Maps a runtime block size K in 1..kMaxBlock to a compile-time constant KCONST visible inside
// the lambda passed as the last argument (host code only: launchers, never kernels).
#include <stdexcept>
#include <string>
#define NLSEQ_BLOCK_SWITCH(K, KCONST, ...)                                                      \
  [&] {                                                                                         \
    switch (K) {                                                                                \
      case 1: { constexpr int KCONST = 1; return __VA_ARGS__(); }                               \
      case 2: { constexpr int KCONST = 2; return __VA_ARGS__(); }                               \
      case 3: { constexpr int KCONST = 3; return __VA_ARGS__(); }                               \
      case 4: { constexpr int KCONST = 4; return __VA_ARGS__(); }                               \
      default:                                                                                  \
        throw std::invalid_argument("nlseq: block size K must be in 1..4, got " + std::to_string(K)); \
    }                                                                                           \
  }()
