// C++ CPU kernels of the linear recurrence (docs/spec.md §1.1–1.2).
//
// The scan is memory-bound: the forward reads A, b and writes h (3 words per element for the
// diagonal case), the backward reads A, h, dh and writes dA, db (5 words). Everything here is
// about touching each element once, in long contiguous runs, with vector instructions:
//
// * Work is split over (batch, block of channels). A block's slice of A, b and h at one time
//   step is contiguous, so the inner loop over channels streams memory and vectorises (the
//   channel loops are compiled again for AVX2/AVX-512, csrc/cpu/simd.h). Blocks are as wide as
//   the threads allow (whole rows when B >= threads) and no narrower than one cache line, so
//   two threads never share a line.
// * When (batch, block) items are fewer than threads even at one cache line per block (few
//   channels, long T), time is cut into chunks as well, in three phases:
//     1. chunk 0 of every item is run to completion from the true initial state (3 words per
//        element), while the other threads compose the later chunks into one affine map per
//        channel (2 words per element: A and b read, nothing written);
//     2. a short sequential pass over chunks turns those maps into each chunk's incoming state;
//     3. the later chunks are re-run from their incoming states (3 words per element).
//   Chunk 0 is longer than the others so that both phase-1 jobs take the same time; with two
//   threads each thread moves 2.1 T words instead of the 2.5 T of re-running every chunk.
//   For K = 1, time chunks are also preferred to splitting rows into pieces under kMinRunBytes
//   (few channels, long T): short strided pieces defeat the prefetchers (see run_scan).
//   Composed A entries below the smallest normal number are flushed to 0 (flush_subnormal):
//   a product of gates in (1/2, 1) otherwise sticks at the smallest subnormal, and every
//   multiply by it is a microcode assist.
// * Blocks of exactly 16, 32 or 64 float32 channels (K = 1) keep their state in registers
//   across steps (fwd_run_narrow, compose_run_narrow); wider blocks go through `state`.
// * Below kMinParallelWork elements one thread does everything: a parallel region costs tens
//   of microseconds, and on a busy machine it waits for a descheduled thread (milliseconds).
//
// The forward and the backward share this engine: the backward is the same recurrence run the
// other way with transposed, shifted blocks (see BackwardProblem). Accumulation is float32
// (float64 for float64 inputs); the carried state never leaves the accumulation type. Every
// path computes each step as b + A·state, term by term in the same order, with -ffp-contract=off
// (no FMA): the vector clones round exactly as the scalar loop does.
#include "scan.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "nlseq/scan.h"
#include "simd.h"

namespace nlseq {
namespace cpu {
namespace {

constexpr int64_t kLineChannels = 16;        // channels of one 64-byte cache line (float32, K = 1)
constexpr int64_t kMaxChannels = 1024;       // widest block: its state (≤ 1024·K² words) stays in L1/L2
constexpr int64_t kMinChunk = 256;           // shortest time chunk worth a separate work item
constexpr int64_t kMinRunBytes = 1024;       // narrowest piece of a row a K = 1 block streams (see run_scan)
constexpr int64_t kMinParallelWork = 1 << 15;  // elements of A below which one thread runs the scan (~30 µs)

#define NLSEQ_INLINE inline __attribute__((always_inline))

// ------------------------------------------------------------------------------------------
// Channel loops. Each advances `count` channels (contiguous, K values each) by `steps` time
// steps; consecutive steps are `stride` rows apart (stride = ±N·K elements of b/h, A moves
// stride·K). `state` holds count·K values in the accumulation type.

// Forward: state <- A_t state + b_t, written to h_t.
template <int K, typename S, typename acc>
NLSEQ_INLINE void fwd_run(int64_t steps, int64_t stride, int64_t count, const S* __restrict__ a,
                          const S* __restrict__ b, S* __restrict__ h, acc* __restrict__ state) {
  for (int64_t s = 0; s < steps; ++s, a += stride * K, b += stride, h += stride) {
    for (int64_t n = 0; n < count; ++n) {
      acc y[K];
      for (int i = 0; i < K; ++i) {
        acc v = static_cast<acc>(b[n * K + i]);
        for (int j = 0; j < K; ++j) v += static_cast<acc>(a[(n * K + i) * K + j]) * state[n * K + j];
        y[i] = v;
      }
      for (int i = 0; i < K; ++i) {
        state[n * K + i] = y[i];
        h[n * K + i] = static_cast<S>(y[i]);
      }
    }
  }
}

// A product of contracting A_t over a chunk decays below the smallest normal number within a
// few hundred steps; unflushed, it never reaches 0 (x·a rounds back to the smallest subnormal
// for a > 1/2) and every multiply by it is a microcode assist, ~100 cycles: the chunked path ran
// 5x slower on uniform(0.5, 1) gates. So composed A entries below the smallest normal number
// become 0. The incoming state gb + gA·x then loses at most |x|·min_normal, which rounds away
// against any gb that is not itself that small.
template <typename acc>
NLSEQ_INLINE acc flush_subnormal(acc m) {
  return (m < std::numeric_limits<acc>::min() && m > -std::numeric_limits<acc>::min()) ? acc(0) : m;
}

// Composition of the steps into one map per channel (gA, gb) <- (A_t, b_t) ∘ (gA, gb), with
// the arithmetic of scan::compose (A entries flushed, above). `tr` reads A transposed (the
// backward's Aᵀ).
template <int K, bool TR, typename S, typename acc>
NLSEQ_INLINE void compose_run(int64_t steps, int64_t stride, int64_t count, const S* __restrict__ a,
                              const S* __restrict__ b, acc* __restrict__ gA, acc* __restrict__ gb) {
  for (int64_t s = 0; s < steps; ++s, a += stride * K, b += stride) {
    for (int64_t n = 0; n < count; ++n) {
      acc am[K][K];
      for (int i = 0; i < K; ++i)
        for (int j = 0; j < K; ++j)
          am[i][j] = static_cast<acc>(TR ? a[(n * K + j) * K + i] : a[(n * K + i) * K + j]);
      acc rb[K], rA[K][K];
      for (int i = 0; i < K; ++i) {
        acc v = static_cast<acc>(b[n * K + i]);
        for (int j = 0; j < K; ++j) {
          v += am[i][j] * gb[n * K + j];
          acc m = acc(0);
          for (int l = 0; l < K; ++l) m += am[i][l] * gA[(n * K + l) * K + j];
          rA[i][j] = flush_subnormal(m);
        }
        rb[i] = v;
      }
      for (int i = 0; i < K; ++i) {
        gb[n * K + i] = rb[i];
        for (int j = 0; j < K; ++j) gA[(n * K + i) * K + j] = rA[i][j];
      }
    }
  }
}

// Backward (docs/spec.md §1.2): λ = g + (LAST ? ḡ : A_nextᵀ λ_next); db = λ; dA = λ h_prevᵀ
// (0 without h_prev). `a` is A at the step after t in the forward direction, `hp` the state
// before it; both move with the same stride as g.
template <int K, bool LAST, bool HAS_HP, typename S, typename acc>
NLSEQ_INLINE void bwd_run(int64_t steps, int64_t stride, int64_t count, const S* __restrict__ g,
                          const S* __restrict__ gl, const S* __restrict__ a, const S* __restrict__ hp,
                          S* __restrict__ db, S* __restrict__ dA, acc* __restrict__ state) {
  for (int64_t s = 0; s < steps; ++s, g += stride, a += stride * K, hp += stride, db += stride, dA += stride * K) {
    for (int64_t n = 0; n < count; ++n) {
      acc lam[K];
      for (int i = 0; i < K; ++i) {
        acc v = static_cast<acc>(g[n * K + i]);
        if constexpr (LAST) {
          v += static_cast<acc>(gl[n * K + i]);
        } else {
          for (int j = 0; j < K; ++j) v += static_cast<acc>(a[(n * K + j) * K + i]) * state[n * K + j];  // Aᵀ λ
        }
        lam[i] = v;
      }
      for (int i = 0; i < K; ++i) {
        state[n * K + i] = lam[i];
        db[n * K + i] = static_cast<S>(lam[i]);
        for (int j = 0; j < K; ++j) {
          if constexpr (HAS_HP) {
            dA[(n * K + i) * K + j] = static_cast<S>(lam[i] * static_cast<acc>(hp[n * K + j]));
          } else {
            dA[(n * K + i) * K + j] = S(0);
          }
        }
      }
    }
  }
}

// fwd_run for K = 1 and a block of exactly W channels (a few vectors): the state stays in
// registers from step to step instead of going through `state` (a store and a load on the
// dependency chain of every step). Same arithmetic, same order, so the same bits.
template <int W, typename acc>
NLSEQ_INLINE void fwd_run_narrow(int64_t steps, int64_t stride, const float* __restrict__ a,
                                 const float* __restrict__ b, float* __restrict__ h, acc* __restrict__ state) {
  acc x[W];
  for (int n = 0; n < W; ++n) x[n] = state[n];
  for (int64_t s = 0; s < steps; ++s, a += stride, b += stride, h += stride) {
    for (int n = 0; n < W; ++n) {
      acc v = static_cast<acc>(b[n]);
      v += static_cast<acc>(a[n]) * x[n];
      x[n] = v;
      h[n] = static_cast<float>(v);
    }
  }
  for (int n = 0; n < W; ++n) state[n] = x[n];
}

// float32 K = 1 and K = 2, the cases that matter for speed, as plain functions so that GCC
// compiles them for AVX2 and AVX-512 too (target_clones does not apply to templates).
NLSEQ_CLONES void fwd_run_f1(int64_t steps, int64_t stride, int64_t count, const float* a, const float* b, float* h,
                             float* state) {
  switch (count) {  // whole rows of few channels (the time-chunked split, run_scan)
    case 16: return fwd_run_narrow<16, float>(steps, stride, a, b, h, state);
    case 32: return fwd_run_narrow<32, float>(steps, stride, a, b, h, state);
    case 64: return fwd_run_narrow<64, float>(steps, stride, a, b, h, state);
    default: return fwd_run<1, float, float>(steps, stride, count, a, b, h, state);
  }
}
NLSEQ_CLONES void fwd_run_f2(int64_t steps, int64_t stride, int64_t count, const float* a, const float* b, float* h,
                             float* state) {
  fwd_run<2, float, float>(steps, stride, count, a, b, h, state);
}
// compose_run for K = 1 and exactly W channels, the map kept in registers (as fwd_run_narrow).
template <int W>
NLSEQ_INLINE void compose_run_narrow(int64_t steps, int64_t stride, const float* __restrict__ a,
                                     const float* __restrict__ b, float* __restrict__ gA, float* __restrict__ gb) {
  float xa[W], xb[W];
  for (int n = 0; n < W; ++n) xa[n] = gA[n], xb[n] = gb[n];
  for (int64_t s = 0; s < steps; ++s, a += stride, b += stride) {
    for (int n = 0; n < W; ++n) {
      const float am = a[n];
      float v = b[n];
      v += am * xb[n];
      float m = 0.0f;
      m += am * xa[n];
      xb[n] = v;
      xa[n] = flush_subnormal(m);
    }
  }
  for (int n = 0; n < W; ++n) gA[n] = xa[n], gb[n] = xb[n];
}

NLSEQ_CLONES void compose_run_f1(int64_t steps, int64_t stride, int64_t count, const float* a, const float* b,
                                 float* gA, float* gb) {
  switch (count) {  // K = 1: Aᵀ = A
    case 16: return compose_run_narrow<16>(steps, stride, a, b, gA, gb);
    case 32: return compose_run_narrow<32>(steps, stride, a, b, gA, gb);
    case 64: return compose_run_narrow<64>(steps, stride, a, b, gA, gb);
    default: return compose_run<1, false, float, float>(steps, stride, count, a, b, gA, gb);
  }
}
NLSEQ_CLONES void compose_run_f2(int64_t steps, int64_t stride, int64_t count, const float* a, const float* b,
                                 float* gA, float* gb) {
  compose_run<2, false, float, float>(steps, stride, count, a, b, gA, gb);
}
NLSEQ_CLONES void compose_run_f2t(int64_t steps, int64_t stride, int64_t count, const float* a, const float* b,
                                  float* gA, float* gb) {
  compose_run<2, true, float, float>(steps, stride, count, a, b, gA, gb);
}
NLSEQ_CLONES void bwd_run_mid_f1(int64_t steps, int64_t stride, int64_t count, const float* g, const float* a,
                                 const float* hp, float* db, float* dA, float* state) {
  bwd_run<1, false, true, float, float>(steps, stride, count, g, nullptr, a, hp, db, dA, state);
}
NLSEQ_CLONES void bwd_run_mid_f2(int64_t steps, int64_t stride, int64_t count, const float* g, const float* a,
                                 const float* hp, float* db, float* dA, float* state) {
  bwd_run<2, false, true, float, float>(steps, stride, count, g, nullptr, a, hp, db, dA, state);
}

template <int K, typename S, typename acc>
void fwd_dispatch(int64_t steps, int64_t stride, int64_t count, const S* a, const S* b, S* h, acc* state) {
  if constexpr (std::is_same_v<S, float> && K == 1) {
    fwd_run_f1(steps, stride, count, a, b, h, state);
  } else if constexpr (std::is_same_v<S, float> && K == 2) {
    fwd_run_f2(steps, stride, count, a, b, h, state);
  } else {
    fwd_run<K, S, acc>(steps, stride, count, a, b, h, state);
  }
}

template <int K, bool TR, typename S, typename acc>
void compose_dispatch(int64_t steps, int64_t stride, int64_t count, const S* a, const S* b, acc* gA, acc* gb) {
  if constexpr (std::is_same_v<S, float> && K == 1) {
    compose_run_f1(steps, stride, count, a, b, gA, gb);
  } else if constexpr (std::is_same_v<S, float> && K == 2) {
    if constexpr (TR) {
      compose_run_f2t(steps, stride, count, a, b, gA, gb);
    } else {
      compose_run_f2(steps, stride, count, a, b, gA, gb);
    }
  } else {
    compose_run<K, TR, S, acc>(steps, stride, count, a, b, gA, gb);
  }
}

template <int K, typename S, typename acc>
void bwd_mid_dispatch(int64_t steps, int64_t stride, int64_t count, const S* g, const S* a, const S* hp, S* db, S* dA,
                      acc* state) {
  if constexpr (std::is_same_v<S, float> && K == 1) {
    bwd_run_mid_f1(steps, stride, count, g, a, hp, db, dA, state);
  } else if constexpr (std::is_same_v<S, float> && K == 2) {
    bwd_run_mid_f2(steps, stride, count, g, a, hp, db, dA, state);
  } else {
    bwd_run<K, false, true, S, acc>(steps, stride, count, g, nullptr, a, hp, db, dA, state);
  }
}

// ------------------------------------------------------------------------------------------
// Problems. A problem runs travel-order steps [i0, i1) of channels [n0, n1) of batch bi from a
// state, writing outputs (run), or composes them into one map per channel (compose). Travel
// order is t = i, or t = T-1-i when `backwards`.

// Forward problem: step t is (A_t, b_t); the output at t is the state itself.
template <int K, typename scalar_t>
struct ForwardProblem {
  using scalar = scalar_t;
  using acc = acc_t<scalar_t>;
  const scalar_t* A;  // [B, T, N, K, K]
  const scalar_t* b;  // [B, T, N, K]
  scalar_t* h;        // [B, T, N, K]
  int64_t T, N;
  bool backwards;  // travel t = T-1 .. 0 (reverse=True)

  int64_t time_of(int64_t i) const { return backwards ? T - 1 - i : i; }
  int64_t stride() const { return (backwards ? -1 : 1) * N * K; }

  void run(int64_t bi, int64_t i0, int64_t i1, int64_t n0, int64_t n1, acc* state) const {
    if (i1 <= i0) return;
    const int64_t row = (bi * T + time_of(i0)) * N + n0;
    fwd_dispatch<K, scalar_t, acc>(i1 - i0, stride(), n1 - n0, A + row * K * K, b + row * K, h + row * K, state);
  }
  void compose(int64_t bi, int64_t i0, int64_t i1, int64_t n0, int64_t n1, acc* gA, acc* gb) const {
    if (i1 <= i0) return;
    const int64_t row = (bi * T + time_of(i0)) * N + n0;
    compose_dispatch<K, false, scalar_t, acc>(i1 - i0, stride(), n1 - n0, A + row * K * K, b + row * K, gA, gb);
  }
};

// Backward problem (docs/spec.md §1.2), for a forward run in direction `reverse`:
//   λ_t = g_t + [t is the last step] ḡ + A_{next(t)}ᵀ λ_{next(t)},
// where next(t) is the step after t in the forward direction. It travels the other way, and
// writes db_t = λ_t and dA_t = λ_t h_{prev(t)}ᵀ with h_{prev(first)} = h0 (or 0). The last
// forward step comes first in travel order (ḡ joins, there is no A_next) and the first forward
// step comes last (h_prev is h0 or nothing): each is peeled off as a one-step run, so the steps
// in between go through one branch-free loop.
template <int K, typename scalar_t>
struct BackwardProblem {
  using scalar = scalar_t;
  using acc = acc_t<scalar_t>;
  const scalar_t* A;            // [B, T, N, K, K]
  const scalar_t* h;            // [B, T, N, K] forward states
  const scalar_t* h0;           // [B, N, K] or nullptr
  const scalar_t* grad_h;       // [B, T, N, K]
  const scalar_t* grad_h_last;  // [B, N, K]
  scalar_t* dA;                 // [B, T, N, K, K]
  scalar_t* db;                 // [B, T, N, K]
  int64_t T, N;
  bool reverse;  // direction of the *forward* recurrence

  // Travel order runs against the forward: i = 0 is the forward's last step.
  int64_t time_of(int64_t i) const { return reverse ? i : T - 1 - i; }
  int64_t fdir() const { return reverse ? -1 : 1; }  // forward direction in t
  int64_t stride() const { return -fdir() * N * K; }

  void run(int64_t bi, int64_t i0, int64_t i1, int64_t n0, int64_t n1, acc* state) const {
    const int64_t count = n1 - n0;
    if (i0 == 0 && i1 > i0) {  // the forward's last step: λ = g + ḡ
      const int64_t t = time_of(0), row = (bi * T + t) * N + n0;
      const scalar_t* gl = grad_h_last + (bi * N + n0) * K;
      const scalar_t* hp = prev_state(bi, t, n0);
      if (hp != nullptr)
        bwd_run<K, true, true, scalar_t, acc>(1, 0, count, grad_h + row * K, gl, nullptr, hp, db + row * K,
                                              dA + row * K * K, state);
      else
        bwd_run<K, true, false, scalar_t, acc>(1, 0, count, grad_h + row * K, gl, nullptr, nullptr, db + row * K,
                                               dA + row * K * K, state);
      ++i0;
    }
    // The forward's first step (i = T-1) reads h0 (or nothing) as h_prev: peel it too, so the
    // steps in between all find h_prev inside h, one row behind, and share one loop.
    const bool peel_first = i1 == T && i1 > i0;
    const int64_t mid_end = peel_first ? T - 1 : i1;
    if (mid_end > i0) {
      const int64_t t = time_of(i0), row = (bi * T + t) * N + n0;
      const int64_t next = (bi * T + t + fdir()) * N + n0;
      bwd_mid_dispatch<K, scalar_t, acc>(mid_end - i0, stride(), count, grad_h + row * K, A + next * K * K,
                                         prev_state(bi, t, n0), db + row * K, dA + row * K * K, state);
    }
    if (peel_first) {
      const int64_t t = time_of(T - 1), row = (bi * T + t) * N + n0;
      const int64_t next = (bi * T + t + fdir()) * N + n0;
      const scalar_t* hp = prev_state(bi, t, n0);
      if (hp != nullptr)
        bwd_run<K, false, true, scalar_t, acc>(1, 0, count, grad_h + row * K, nullptr, A + next * K * K, hp,
                                               db + row * K, dA + row * K * K, state);
      else
        bwd_run<K, false, false, scalar_t, acc>(1, 0, count, grad_h + row * K, nullptr, A + next * K * K, nullptr,
                                                db + row * K, dA + row * K * K, state);
    }
  }
  // Only steps with i >= 1 are composed (chunk 0, which holds i = 0, is always run directly).
  void compose(int64_t bi, int64_t i0, int64_t i1, int64_t n0, int64_t n1, acc* gA, acc* gb) const {
    if (i1 <= i0) return;
    const int64_t t = time_of(i0), row = (bi * T + t) * N + n0;
    const int64_t next = (bi * T + t + fdir()) * N + n0;
    compose_dispatch<K, true, scalar_t, acc>(i1 - i0, stride(), n1 - n0, A + next * K * K, grad_h + row * K, gA, gb);
  }

 private:
  // h_{prev(t)} of channels from n0: the forward state before step t, h0, or nullptr.
  const scalar_t* prev_state(int64_t bi, int64_t t, int64_t n0) const {
    const int64_t p = t - fdir();
    if (p >= 0 && p < T) return h + ((bi * T + p) * N + n0) * K;
    return h0 != nullptr ? h0 + (bi * N + n0) * K : nullptr;
  }
};

// Runs `fn(begin, end)` over [0, n): in parallel, or on this thread when `threads` is 1.
template <typename F>
void parallel(int64_t n, int64_t threads, const F& fn) {
  if (threads <= 1 || n <= 1) {
    fn(0, n);
  } else {
    at::parallel_for(0, n, 1, fn);
  }
}

// Runs the recurrence of `p` over every travel step from the per-channel initial states `init`
// ([B, N, K] in acc, or nullptr for zeros), writing the final states into `fin` ([B, N, K]).
// Time chunks for P threads per item: M = P(P-1) chunks of length L after chunk 0 (see
// run_scan), or M = 0 when T is too short for chunks of kMinChunk steps.
struct Chunks {
  int64_t M = 0, L = 0;
};
inline Chunks time_chunks(int64_t T, int64_t P) {
  if (P < 2) return {};
  const int64_t m = P * (P - 1);
  const int64_t l = (3 * T) / (2 * P + 3 * m);  // T = L0 + M L with L0 = 2PL/3
  return l >= kMinChunk ? Chunks{m, l} : Chunks{};
}

// Channel block width when the rows of a batch are split into `parts` blocks (≥ one line each).
inline int64_t block_width(int64_t N, int64_t parts, int K) {
  int64_t width = (N + parts - 1) / parts;
  width = (width + kLineChannels - 1) / kLineChannels * kLineChannels;
  return std::min({width, std::max<int64_t>(kLineChannels, kMaxChannels / K), N});
}

template <int K, typename acc, typename Problem>
void run_scan(const Problem& p, int64_t B, int64_t T, int64_t N, const acc* init, acc* fin) {
  const int64_t threads =
      B * T * N * K * K < kMinParallelWork ? 1 : std::max<int64_t>(1, at::get_num_threads());
  // Channel blocks: whole rows when batches alone feed the threads, else split (≥ one line).
  const int64_t per_batch = std::max<int64_t>(1, (threads + B - 1) / B);
  int64_t width = block_width(N, per_batch, K);
  // Few channels (K = 1): a split that leaves each block less than kMinRunBytes of every
  // stream per step makes each thread read and write short pieces of rows whose neighbours
  // belong to the other threads, and the hardware prefetchers, which follow contiguous runs,
  // fall behind (the 2-thread split of 64 float32 channels ran at 0.36x the copy peer; splits
  // of 512 B pieces at under 0.5x, of 1 KiB at 0.7x, against 0.7-0.9x for chunked whole rows).
  // Then blocks stay at least that wide (whole rows when N is smaller) and the threads left
  // over cut time into chunks instead, when T is long enough for them. Only for K = 1: for
  // K >= 2 composing a step costs K times the arithmetic of running it (matrix products), and
  // at 1x65536x64 K = 2 the split into 32-channel blocks (512 B of A) was the faster one
  // (13.9 ms against 19.6 ms for the chunks, forward).
  using scalar = typename Problem::scalar;
  const int64_t min_width = std::max<int64_t>(kLineChannels, kMinRunBytes / int64_t(sizeof(scalar)));
  if (K == 1 && width < min_width && per_batch > 1) {
    const int64_t wide = block_width(N, std::max<int64_t>(1, std::min(per_batch, N / min_width)), K);
    const int64_t wide_items = B * ((N + wide - 1) / wide);
    if (time_chunks(T, threads / wide_items).M > 0) width = wide;
  }
  const int64_t nblk = (N + width - 1) / width;
  const int64_t items = B * nblk;
  auto block = [&](int64_t w, int64_t& bi, int64_t& n0, int64_t& n1) {
    bi = w / nblk;
    n0 = (w % nblk) * width;
    n1 = std::min(N, n0 + width);
  };
  auto load_init = [&](int64_t bi, int64_t n0, int64_t n1, acc* state) {
    for (int64_t q = 0; q < (n1 - n0) * K; ++q) state[q] = init ? init[(bi * N + n0) * K + q] : acc(0);
  };
  auto store = [&](int64_t bi, int64_t n0, int64_t n1, const acc* state, acc* dst) {
    std::copy(state, state + (n1 - n0) * K, dst + (bi * N + n0) * K);
  };

  // Time chunks: P threads per item; chunk 0 of length L0 is run directly, chunks 1..M (M =
  // P(P-1), length L) are composed by the other P-1 threads (P chunks each, 2 words per
  // element) and re-run by all P (P-1 each, 3 words). L0 = 2PL/3 balances phase 1.
  const int64_t P = threads / items;
  const Chunks chunks = time_chunks(T, P);
  const int64_t M = chunks.M, L = chunks.L, L0 = T - M * L;
  if (M == 0) {
    parallel(items, threads, [&](int64_t w0, int64_t w1) {
      std::vector<acc> state(width * K);
      for (int64_t w = w0; w < w1; ++w) {
        int64_t bi, n0, n1;
        block(w, bi, n0, n1);
        load_init(bi, n0, n1, state.data());
        p.run(bi, 0, T, n0, n1, state.data());
        store(bi, n0, n1, state.data(), fin);
      }
    });
    return;
  }

  // Chunk c >= 1 covers travel steps [L0 + (c-1) L, L0 + c L).
  auto chunk_begin = [&](int64_t c) { return c == 0 ? int64_t(0) : L0 + (c - 1) * L; };
  std::vector<acc> aggA(B * M * N * K * K), aggb(B * M * N * K);  // chunk c at (bi * M + c-1) * N
  std::vector<acc> carry(B * N * K);                              // state after chunk 0
  // Phase 1: job (w, 0) runs chunk 0 of item w; job (w, j >= 1) composes chunks (j-1)P+1 .. jP.
  parallel(items * P, threads, [&](int64_t j0, int64_t j1) {
    std::vector<acc> state(width * K);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t w = j / P, r = j % P;
      int64_t bi, n0, n1;
      block(w, bi, n0, n1);
      if (r == 0) {
        load_init(bi, n0, n1, state.data());
        p.run(bi, 0, L0, n0, n1, state.data());
        store(bi, n0, n1, state.data(), carry.data());
        continue;
      }
      for (int64_t c = (r - 1) * P + 1; c <= r * P; ++c) {
        acc* gA = aggA.data() + ((bi * M + c - 1) * N + n0) * K * K;
        acc* gb = aggb.data() + ((bi * M + c - 1) * N + n0) * K;
        for (int64_t n = 0; n < n1 - n0; ++n)
          for (int i = 0; i < K; ++i) {
            gb[n * K + i] = acc(0);
            for (int jj = 0; jj < K; ++jj) gA[(n * K + i) * K + jj] = acc(i == jj);
          }
        p.compose(bi, chunk_begin(c), chunk_begin(c) + L, n0, n1, gA, gb);
      }
    }
  });
  // Phase 2: incoming state of every chunk c >= 1 (overwrites aggb; aggA is no longer needed).
  for (int64_t q = 0; q < B * N; ++q) {
    const int64_t bi = q / N, n = q % N;
    acc x[K];
    for (int k = 0; k < K; ++k) x[k] = carry[q * K + k];
    for (int64_t c = 1; c <= M; ++c) {
      const int64_t e = (bi * M + c - 1) * N + n;
      acc y[K];
      for (int i = 0; i < K; ++i) {
        acc v = aggb[e * K + i];
        for (int jj = 0; jj < K; ++jj) v += aggA[(e * K + i) * K + jj] * x[jj];
        y[i] = v;
      }
      for (int k = 0; k < K; ++k) {
        aggb[e * K + k] = x[k];
        x[k] = y[k];
      }
    }
  }
  // Phase 3: re-run chunks 1..M from their incoming states; the last one gives `fin`.
  parallel(items * M, threads, [&](int64_t j0, int64_t j1) {
    std::vector<acc> state(width * K);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t w = j / M, c = j % M + 1;
      int64_t bi, n0, n1;
      block(w, bi, n0, n1);
      const acc* in = aggb.data() + ((bi * M + c - 1) * N + n0) * K;
      std::copy(in, in + (n1 - n0) * K, state.data());
      p.run(bi, chunk_begin(c), chunk_begin(c) + L, n0, n1, state.data());
      if (c == M) store(bi, n0, n1, state.data(), fin);
    }
  });
}

}  // namespace

void scan_fwd(const at::Tensor& A, const at::Tensor& b, const c10::optional<at::Tensor>& h0, bool reverse,
              at::Tensor& h, at::Tensor& h_last) {
  const int64_t B = b.size(0), T = b.size(1), N = b.size(2);
  const int K = static_cast<int>(b.size(3));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "nlseq_scan_fwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc>::value;
    at::Tensor init = h0.has_value() ? h0->to(acc_dtype).contiguous() : at::Tensor();
    at::Tensor fin = at::empty({B, N, K}, b.options().dtype(acc_dtype));
    NLSEQ_BLOCK_SWITCH(K, KB, [&] {
      ForwardProblem<KB, scalar_t> p{A.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), T, N,
                                     reverse};
      run_scan<KB, acc>(p, B, T, N, init.defined() ? init.data_ptr<acc>() : nullptr, fin.data_ptr<acc>());
    });
    h_last.copy_(fin);
  });
}

void scan_bwd(const at::Tensor& A, const at::Tensor& h, const c10::optional<at::Tensor>& h0,
              const at::Tensor& grad_h, const at::Tensor& grad_h_last, bool reverse,
              at::Tensor& dA, at::Tensor& db, at::Tensor& dh0) {
  const int64_t B = h.size(0), T = h.size(1), N = h.size(2);
  const int K = static_cast<int>(h.size(3));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "nlseq_scan_bwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    std::vector<acc> lam_first(B * N * K);
    NLSEQ_BLOCK_SWITCH(K, KB, [&] {
      BackwardProblem<KB, scalar_t> p{A.data_ptr<scalar_t>(),
                                      h.data_ptr<scalar_t>(),
                                      h0.has_value() ? h0->data_ptr<scalar_t>() : nullptr,
                                      grad_h.data_ptr<scalar_t>(),
                                      grad_h_last.data_ptr<scalar_t>(),
                                      dA.data_ptr<scalar_t>(),
                                      db.data_ptr<scalar_t>(),
                                      T,
                                      N,
                                      reverse};
      // λ runs against the forward direction; its final state is λ at the forward's first step.
      run_scan<KB, acc>(p, B, T, N, nullptr, lam_first.data());
      // dh0 = A_firstᵀ λ_first, where "first" is the forward's first step (B·N·K², no pass over T).
      const scalar_t* a = A.data_ptr<scalar_t>();
      scalar_t* out = dh0.data_ptr<scalar_t>();
      const int64_t tf = reverse ? T - 1 : 0;
      for (int64_t q = 0; q < B * N; ++q) {
        const scalar_t* blk = a + ((q / N * T + tf) * N + q % N) * KB * KB;
        for (int j = 0; j < KB; ++j) {
          acc v = acc(0);
          for (int i = 0; i < KB; ++i) v += static_cast<acc>(blk[i * KB + j]) * lam_first[q * KB + i];
          out[q * KB + j] = static_cast<scalar_t>(v);
        }
      }
    });
  });
}

}  // namespace cpu
}  // namespace nlseq
