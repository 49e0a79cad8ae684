// Fused ParaRNN CUDA kernels (templated; instantiated in csrc/cuda/pararnn.cu). Torch-free.
//
// The built-in cells are channel-independent given U (the GRU Jacobian is diagonal, the LSTM one
// a 2×2 block per channel), so one thread owns one channel n of one batch row b and one time
// chunk c = [c·L, min((c+1)·L, T)). Cell math comes from nlseq/pararnn.h.
//
// Forward: Newton's method on the chunk-boundary states (multiple shooting). x_c is the state
// entering chunk c (x_0 = s0, exact), Φ_c the exact map of chunk c; the system is x_{c+1} = Φ_c(x_c).
//   sweep     every chunk runs its exact recurrence from x_c (writing S_all) and carries the
//             tangent M_c = ∂Φ_c/∂x_c (product of the per-step Jacobians, S×S per channel);
//   boundary  per channel, sequentially over chunks: the residual at each chunk start
//             |f(x_c, u) − f(Φ_{c−1}(x_{c−1}), u)| (inside a chunk it is 0 by construction),
//             max-reduced into res[it] (float bits, atomicMax: order-free, deterministic), and the
//             Newton update x_c ← Φ_{c−1}(x^old_{c−1}) + M_{c−1}(x^new_{c−1} − x^old_{c−1}).
// Initial guess x_c = f(0, u_{c·L−1}) (the paper's). After k updates chunks 0..k are exact bit for
// bit, so sweep k skips chunks c < k and boundary k starts at c = k+1; min(max_iters, C−1)
// updates at most. Each launch reads res[it−1] and exits when it is <= tol or NaN: no host sync.
//
// Backward: λ_t = g_t + J_{t+1}ᵀ λ_{t+1}, g_{T−1} += ds_last (linear): pass A runs each chunk's
// reverse recurrence from a zero carry (q_c) with the transposed tangent (Q_c); the carry kernel
// gives every chunk's incoming carry; pass B reruns each chunk with its true carry, fusing the
// per-step VJPs (dU) and per-thread partial sums of dA, dP over the chunk; a reduce kernel sums
// the partials over (b, c) in a fixed order (deterministic). With one chunk pass A is skipped.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "nlseq/pararnn.h"

namespace nlseq {
namespace cuda {
namespace pararnn_detail {

constexpr int kThreads = 128;  // threads per block (one channel each)
constexpr int kUnroll = 4;     // time steps whose loads are issued together

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

// Kernel arguments (by value). Workspace buffers are float32 unless noted.
struct FwdParams {
  const void* U;
  const float* A;
  const float* P;
  const void* s0;
  void* S_all;
  float* X;         // [B, C, S, N]      incoming states x_c
  float* PHI;       // [B, C, S, N]      Φ_c(x_c)
  float* MT;        // [B, C, S·S, N]    tangents M_c (row-major S×S)
  unsigned* res;    // [K + 1]           float bits of the residual of each iteration
  int64_t* iters;
  float* residual;
  int64_t B, T, N, L, C, K;
  float tol;
};

struct BwdParams {
  const void* U;
  const float* A;
  const float* P;
  const void* s0;
  const void* S_all;
  const void* dS;
  const void* ds_last;
  void* dU;
  float* dA;
  float* dP;
  void* ds0;
  float* QQ;  // [B, C, S + S·S, N]  (q_c, Q_c row-major)
  float* MU;  // [B, C, S, N]        carry entering each chunk's last step
  float* PA;  // [B, C, 3, N]        partial dA
  float* PP;  // [B, C, 2, N]        partial dP
  int64_t B, T, N, L, C;
};

__device__ __forceinline__ bool still_running(const unsigned* res, int it, float tol) {
  // iteration it − 1 left a residual > tol (a NaN compares false: stop)
  return __uint_as_float(res[it - 1]) > tol;
}

template <int S>
__device__ __forceinline__ void identity(float (&M)[S][S]) {
#pragma unroll
  for (int i = 0; i < S; ++i)
#pragma unroll
    for (int j = 0; j < S; ++j) M[i][j] = i == j ? 1.f : 0.f;
}

// M ← J M, or M ← Jᵀ M with TRANSPOSE (the backward's transposed tangent).
template <bool TRANSPOSE, int S>
__device__ __forceinline__ void left_mul(const float (&J)[S][S], float (&M)[S][S]) {
  float R[S][S];
#pragma unroll
  for (int i = 0; i < S; ++i)
#pragma unroll
    for (int j = 0; j < S; ++j) {
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < S; ++k) acc += (TRANSPOSE ? J[k][i] : J[i][k]) * M[k][j];
      R[i][j] = acc;
    }
#pragma unroll
  for (int i = 0; i < S; ++i)
#pragma unroll
    for (int j = 0; j < S; ++j) M[i][j] = R[i][j];
}

template <typename T>
__device__ __forceinline__ void load_u(const T* U, int64_t b, int64_t t, int64_t T_, int64_t N, int64_t n,
                                       float (&u)[3]) {
  const T* p = U + ((b * T_ + t) * 3) * N + n;
  u[0] = to_f(p[0]);
  u[1] = to_f(p[N]);
  u[2] = to_f(p[2 * N]);
}

__device__ __forceinline__ void load_params(const float* A, const float* P, int64_t N, int64_t n, float (&a)[3],
                                            float (&p)[2]) {
  a[0] = A[n];
  a[1] = A[N + n];
  a[2] = A[2 * N + n];
  p[0] = P != nullptr ? P[n] : 0.f;
  p[1] = P != nullptr ? P[N + n] : 0.f;
}

// *dst = max(*dst, max of v over the block): a warp shuffle reduction, then one atomic per block.
__device__ __forceinline__ void block_max_to(unsigned v, unsigned* dst) {
#ifdef NLSEQ_PARARNN_EMULATE  // CPU emulation of the kernels (tests/cuda_emu): threads run one by one
  *dst = v > *dst ? v : *dst;
#else
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
  __shared__ unsigned warp_max[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned m = warp_max[0];
#pragma unroll
    for (int w = 1; w < kThreads / 32; ++w) m = max(m, warp_max[w]);
    atomicMax(dst, m);
  }
#endif
}

// ------------------------------------------------------------------------------------ forward
template <typename Cell, typename T, bool FIRST>
__global__ void __launch_bounds__(kThreads) fwd_sweep_kernel(FwdParams p, int it) {
  constexpr int S = Cell::S;
  const int64_t N = p.N, T_ = p.T, C = p.C;
  const int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t c = blockIdx.y, b = blockIdx.z;
  if (n >= N || c < it) return;
  if (!FIRST && !still_running(p.res, it, p.tol)) return;
  const T* U = static_cast<const T*>(p.U);
  T* Sall = static_cast<T*>(p.S_all);
  float a[3], pp[2];
  load_params(p.A, p.P, N, n, a, pp);
  const int64_t t0 = c * p.L, t1 = min(t0 + p.L, T_);
  float* X = p.X + ((b * C + c) * S) * N + n;
  float x[S];
  if (FIRST) {
    if (c == 0) {
      const T* s0 = static_cast<const T*>(p.s0);
#pragma unroll
      for (int s = 0; s < S; ++s) x[s] = s0 != nullptr ? to_f(s0[(b * S + s) * N + n]) : 0.f;
    } else {  // the paper's initial guess: one step from the zero state
      float u[3], zero[S];
#pragma unroll
      for (int s = 0; s < S; ++s) zero[s] = 0.f;
      load_u(U, b, t0 - 1, T_, N, n, u);
      Cell::step(u, a, pp, zero, x);
    }
#pragma unroll
    for (int s = 0; s < S; ++s) X[s * N] = x[s];
  } else {
#pragma unroll
    for (int s = 0; s < S; ++s) x[s] = X[s * N];
  }
  float M[S][S];
  identity(M);
  for (int64_t t = t0; t < t1; t += kUnroll) {
    float u[kUnroll][3];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      if (t + k < t1) {
        load_u(U, b, t + k, T_, N, n, u[k]);
      } else {
        u[k][0] = u[k][1] = u[k][2] = 0.f;
      }
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      if (t + k < t1) {
        float y[S], J[S][S];
        Cell::step_jac(u[k], a, pp, x, y, J);
        left_mul<false>(J, M);
        T* ps = Sall + ((b * T_ + t + k) * S) * N + n;
#pragma unroll
        for (int s = 0; s < S; ++s) {
          x[s] = y[s];
          ps[s * N] = from_f<T>(y[s]);
        }
      }
    }
  }
  float* PHI = p.PHI + ((b * C + c) * S) * N + n;
  float* MT = p.MT + ((b * C + c) * S * S) * N + n;
#pragma unroll
  for (int i = 0; i < S; ++i) {
    PHI[i * N] = x[i];
#pragma unroll
    for (int j = 0; j < S; ++j) MT[(i * S + j) * N] = M[i][j];
  }
}

// Inputs of the boundary update at the start of chunk c: u_{c·L}, x_c, Φ_{c−1}, M_{c−1}.
template <int S>
struct BoundaryIn {
  float u[3], x[S], phi[S], M[S][S];
};

template <int S, typename T>
__device__ __forceinline__ void load_boundary(const FwdParams& p, const T* U, int64_t b, int64_t c, int64_t n,
                                              BoundaryIn<S>& in) {
  const int64_t N = p.N, C = p.C;
  const float* X = p.X + ((b * C + c) * S) * N + n;
  const float* PHI = p.PHI + ((b * C + c - 1) * S) * N + n;
  const float* MT = p.MT + ((b * C + c - 1) * S * S) * N + n;
  load_u(U, b, c * p.L, p.T, N, n, in.u);
#pragma unroll
  for (int i = 0; i < S; ++i) {
    in.x[i] = X[i * N];
    in.phi[i] = PHI[i * N];
#pragma unroll
    for (int j = 0; j < S; ++j) in.M[i][j] = MT[(i * S + j) * N];
  }
}

template <typename Cell, typename T>
__global__ void __launch_bounds__(kThreads) fwd_boundary_kernel(FwdParams p, int it) {
  constexpr int S = Cell::S;
  const int64_t N = p.N, C = p.C;
  const int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (it > 0 && !still_running(p.res, it, p.tol)) return;  // uniform over the grid
  // residuals are >= 0: their float bits order like the values, and a NaN (exponent all ones,
  // nonzero mantissa, sign cleared by fabsf) is above +inf, so an unsigned max keeps any NaN
  unsigned rbits = 0u;
  if (n < N) {
    const T* U = static_cast<const T*>(p.U);
    float a[3], pp[2];
    load_params(p.A, p.P, N, n, a, pp);
    float d[S];  // x^new − x^old of the previous chunk; x_it is exact and stays: 0
#pragma unroll
    for (int s = 0; s < S; ++s) d[s] = 0.f;
    // the inputs of chunk c + 1 are loaded while chunk c is processed (they do not depend on d)
    BoundaryIn<S> cur{}, nxt{};
    int64_t c = int64_t(it) + 1;
    if (c < C) load_boundary(p, U, b, c, n, cur);
    for (; c < C; ++c) {
      if (c + 1 < C) load_boundary(p, U, b, c + 1, n, nxt);
      float y[S], w[S];
      Cell::step(cur.u, a, pp, cur.x, y);
      Cell::step(cur.u, a, pp, cur.phi, w);
#pragma unroll
      for (int i = 0; i < S; ++i) rbits = max(rbits, __float_as_uint(fabsf(y[i] - w[i])));
      float xn[S];
#pragma unroll
      for (int i = 0; i < S; ++i) {
        float acc = cur.phi[i];
#pragma unroll
        for (int j = 0; j < S; ++j) acc += cur.M[i][j] * d[j];
        xn[i] = acc;
      }
      float* X = p.X + ((b * C + c) * S) * N + n;
#pragma unroll
      for (int i = 0; i < S; ++i) {
        d[i] = xn[i] - cur.x[i];
        X[i * N] = xn[i];
      }
      cur = nxt;
    }
  }
  block_max_to(rbits, p.res + it);
}

// iters = first iteration whose residual is <= tol (or NaN), else K; residual = its residual.
__global__ void fwd_finalize_kernel(FwdParams p) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t k = 0;
  while (k < p.K && __uint_as_float(p.res[k]) > p.tol) ++k;
  *p.iters = k;
  *p.residual = __uint_as_float(p.res[k]);
}

// ------------------------------------------------------------------------------------ backward
template <typename Cell, typename T, bool FINAL>
__global__ void __launch_bounds__(kThreads) bwd_chunk_kernel(BwdParams p) {
  constexpr int S = Cell::S;
  const int64_t N = p.N, T_ = p.T, C = p.C;
  const int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t c = blockIdx.y, b = blockIdx.z;
  if (n >= N) return;
  const T* U = static_cast<const T*>(p.U);
  const T* Sall = static_cast<const T*>(p.S_all);
  const T* dS = static_cast<const T*>(p.dS);
  const T* s0 = static_cast<const T*>(p.s0);
  T* dU = static_cast<T*>(p.dU);
  float a[3], pp[2];
  load_params(p.A, p.P, N, n, a, pp);
  const int64_t t0 = c * p.L, t1 = min(t0 + p.L, T_);
  float k[S];  // carry into the current step: λ_t = g_t + k
  if (FINAL) {
    const float* MU = p.MU + ((b * C + c) * S) * N + n;
#pragma unroll
    for (int s = 0; s < S; ++s) k[s] = MU[s * N];
  } else {
#pragma unroll
    for (int s = 0; s < S; ++s) k[s] = 0.f;
  }
  float G[S][S];
  identity(G);
  float da[3] = {0.f, 0.f, 0.f}, dp[2] = {0.f, 0.f};
  for (int64_t t = t1 - 1; t >= t0; t -= kUnroll) {
    float u[kUnroll][3], sp[kUnroll][S], g[kUnroll][S];
#pragma unroll
    for (int q = 0; q < kUnroll; ++q) {
      const int64_t tq = t - q;
      if (tq >= t0) {
        load_u(U, b, tq, T_, N, n, u[q]);
        const T* pg = dS + ((b * T_ + tq) * S) * N + n;
#pragma unroll
        for (int s = 0; s < S; ++s) {
          g[q][s] = to_f(pg[s * N]);
          if (tq > 0) {
            sp[q][s] = to_f(Sall[((b * T_ + tq - 1) * S + s) * N + n]);
          } else {
            sp[q][s] = s0 != nullptr ? to_f(s0[(b * S + s) * N + n]) : 0.f;
          }
        }
      } else {
        u[q][0] = u[q][1] = u[q][2] = 0.f;
#pragma unroll
        for (int s = 0; s < S; ++s) sp[q][s] = g[q][s] = 0.f;
      }
    }
#pragma unroll
    for (int q = 0; q < kUnroll; ++q) {
      const int64_t tq = t - q;
      if (tq >= t0) {
        float lam[S];
#pragma unroll
        for (int s = 0; s < S; ++s) lam[s] = g[q][s] + k[s];
        if (FINAL) {
          float du[3], dap[3], dpp[2];
          Cell::vjp(u[q], a, pp, sp[q], lam, du, dap, dpp, k);
#pragma unroll
          for (int i = 0; i < 3; ++i) da[i] += dap[i];
          dp[0] += dpp[0];
          dp[1] += dpp[1];
          T* pu = dU + ((b * T_ + tq) * 3) * N + n;
          pu[0] = from_f<T>(du[0]);
          pu[N] = from_f<T>(du[1]);
          pu[2 * N] = from_f<T>(du[2]);
        } else {
          float y[S], J[S][S];
          Cell::step_jac(u[q], a, pp, sp[q], y, J);
#pragma unroll
          for (int i = 0; i < S; ++i) {
            float acc = 0.f;
#pragma unroll
            for (int j = 0; j < S; ++j) acc += J[j][i] * lam[j];
            k[i] = acc;
          }
          left_mul<true>(J, G);
        }
      }
    }
  }
  if (FINAL) {
    float* PA = p.PA + ((b * C + c) * 3) * N + n;
    PA[0] = da[0];
    PA[N] = da[1];
    PA[2 * N] = da[2];
    if (p.PP != nullptr) {
      float* PP = p.PP + ((b * C + c) * 2) * N + n;
      PP[0] = dp[0];
      PP[N] = dp[1];
    }
    if (c == 0) {  // the carry out of the first step is ∂L/∂s0
      T* ds0 = static_cast<T*>(p.ds0);
#pragma unroll
      for (int s = 0; s < S; ++s) ds0[(b * S + s) * N + n] = from_f<T>(k[s]);
    }
  } else {
    float* Q = p.QQ + ((b * C + c) * (S + S * S)) * N + n;
#pragma unroll
    for (int s = 0; s < S; ++s) Q[s * N] = k[s];
#pragma unroll
    for (int i = 0; i < S; ++i)
#pragma unroll
      for (int j = 0; j < S; ++j) Q[(S + i * S + j) * N] = G[i][j];
  }
}

// Carry entering every chunk (MU[c]), from the last chunk (ds_last) back to the first:
// MU[c − 1] = Q_c MU[c] + q_c.
template <int S, typename T>
__global__ void __launch_bounds__(kThreads) bwd_carry_kernel(BwdParams p) {
  const int64_t N = p.N, C = p.C;
  const int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (n >= N) return;
  const T* dsl = static_cast<const T*>(p.ds_last);
  float k[S];
#pragma unroll
  for (int s = 0; s < S; ++s) k[s] = to_f(dsl[(b * S + s) * N + n]);
  for (int64_t c = C - 1; c >= 0; --c) {
    float* MU = p.MU + ((b * C + c) * S) * N + n;
#pragma unroll
    for (int s = 0; s < S; ++s) MU[s * N] = k[s];
    if (c > 0) {
      const float* Q = p.QQ + ((b * C + c) * (S + S * S)) * N + n;
      float nk[S];
#pragma unroll
      for (int i = 0; i < S; ++i) {
        float acc = Q[i * N];
#pragma unroll
        for (int j = 0; j < S; ++j) acc += Q[(S + i * S + j) * N] * k[j];
        nk[i] = acc;
      }
#pragma unroll
      for (int s = 0; s < S; ++s) k[s] = nk[s];
    }
  }
}

// out[r, n] = Σ_m part[m, r, n] over m = 0..M−1 in order (deterministic), r < R.
__global__ void __launch_bounds__(256) reduce_partials_kernel(const float* part, float* out, int64_t M, int64_t R,
                                                              int64_t N) {
  const int64_t i = int64_t(blockIdx.x) * 256 + threadIdx.x;
  if (i >= R * N) return;
  float acc = 0.f;
  for (int64_t m = 0; m < M; ++m) acc += part[m * R * N + i];
  out[i] = acc;
}

__global__ void __launch_bounds__(256) fill_zero_kernel(float* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * 256 + threadIdx.x;
  if (i < n) out[i] = 0.f;
}

}  // namespace pararnn_detail
}  // namespace cuda
}  // namespace nlseq
