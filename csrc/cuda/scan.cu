// CUDA kernels of the linear recurrence h_t = A_t h_{t-1} + b_t (docs/spec.md §1.1) and of its
// implicit backward (§1.2), block layout A [B, T, N, K, K], b [B, T, N, K], K = 1..4.
//
// Work decomposition
// ------------------
// A thread block owns one *tile*: kLanes = 32 consecutive channels n of one batch row (lane c
// owns channel n0 + c, so at a fixed time step a warp's loads of A and b are one contiguous,
// coalesced stretch of memory), and one *segment* of the time axis. It walks its segment in
// rounds of R = kWarps · L steps: warp w takes the L consecutive steps [w·L, (w+1)·L) of the
// round, loads them into registers, and composes them into one affine map per channel
// (scan::compose). The kWarps maps go through shared memory; each warp applies the maps of the
// warps before it to the round's incoming state, re-runs its L steps from there out of
// registers and writes the outputs. The last warp's final state is the next round's incoming
// state. Each input element is read from memory once and each output written once.
//
// When the B·ceil(N/32) tiles give most SMs a block, one segment covers all of T (a single pass
// per sequence, no extra traffic). Otherwise (B·N small, T long) T is cut into S segments so that
// about two waves of blocks run, and carries cross the segments in three launches:
//   1. scan_aggregate_kernel: each (tile, segment) composes its steps into one map per channel;
//   2. scan_carry_kernel:     per channel, a sequential pass over the S maps gives each
//                             segment's incoming state (S is at most a few hundred);
//   3. scan_segment_kernel:   each (tile, segment) re-runs from its incoming state (as above).
// That reads the inputs twice (5 instead of 3 words per element in the diagonal forward).
//
// The forward and the backward share this engine through a Problem type (load / emit / init /
// finish), exactly as csrc/cpu/scan.cpp does: the backward is the same recurrence run the
// other way with A_{t±1}ᵀ read in place (no shifted copies), emitting db and dA and finishing
// with dh0. All arithmetic is float32; inputs are converted on load and outputs rounded once.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "nlseq/scan.h"
#include "scan.h"

namespace nlseq {
namespace cuda {
namespace {

using scan::Affine;

constexpr int kLanes = 32;                  // channels per tile (one per lane)
constexpr int kWarps = 8;                   // time sub-chunks per round (one per warp)
constexpr int kThreads = kLanes * kWarps;   // threads per block of the tile kernels
constexpr int kCarryThreads = 256;          // threads per block of scan_carry_kernel
constexpr int kMinBlocksPerSm = 2;          // register cap (128 per thread) for the tile kernels
constexpr int64_t kMaxSegments = 65535;     // gridDim.y limit

// Steps a thread holds in registers per round. The tile kernels double-buffer them (the next
// round's steps load while this round's are composed), so a thread holds 2·L·(K² + K) floats:
// 64 for K = 1, 40-48 for K = 2..4, which fits the 128-register cap of kMinBlocksPerSm without
// spills (ptxas -v, sm_90; L = 8/4/2 for K = 2/3/4 with the second buffer spilled 4-56 bytes).
template <int K>
struct StepsPerThread {
  static constexpr int value = K == 1 ? 16 : K == 2 ? 4 : K == 3 ? 2 : 1;
};
template <int K>
constexpr int64_t round_len() { return int64_t(kWarps) * StepsPerThread<K>::value; }

// Floats of one affine map in the workspace and in shared memory: A (K·K, row-major), then b.
template <int K>
constexpr int map_floats() { return K * K + K; }

// Where the work of one launch lies; identical for the three kernels of one call.
struct Geometry {
  int64_t B, T, N;
  int64_t tiles_per_row;  // ceil(N / kLanes): blockIdx.x = bi * tiles_per_row + tile
  int64_t seg_len;        // steps per segment (blockIdx.y), a multiple of the round length
  int64_t segments;       // S = ceil(T / seg_len)
  bool backwards;         // travel order: t = T-1 .. 0 when true, 0 .. T-1 otherwise

  // i-th step in travel order -> time index t
  __device__ __forceinline__ int64_t time_of(int64_t i) const { return backwards ? T - 1 - i : i; }
};

// ------------------------------------------------------------------------------------ problems
// Forward problem: step t is (A_t, b_t); the state itself is the output at t.
template <int K, typename scalar_t>
struct ForwardProblem {
  const scalar_t* A;   // [B, T, N, K, K]
  const scalar_t* b;   // [B, T, N, K]
  const scalar_t* h0;  // [B, N, K] or nullptr (zero)
  scalar_t* h;         // [B, T, N, K]
  scalar_t* h_last;    // [B, N, K]
  int64_t T, N;

  __device__ __forceinline__ void init(int64_t bi, int64_t n, float (&x)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) x[k] = h0 != nullptr ? to_float(h0[(bi * N + n) * K + k]) : 0.f;
  }
  __device__ __forceinline__ void load(int64_t bi, int64_t t, int64_t n, Affine<K, float>& s) const {
    const int64_t row = (bi * T + t) * N + n;
    const scalar_t* a = A + row * (K * K);
    const scalar_t* bb = b + row * K;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      s.b[i] = to_float(bb[i]);
#pragma unroll
      for (int j = 0; j < K; ++j) s.A[i][j] = to_float(a[i * K + j]);
    }
  }
  __device__ __forceinline__ void emit(int64_t bi, int64_t t, int64_t n, const float (&x)[K]) const {
    scalar_t* out = h + ((bi * T + t) * N + n) * K;
#pragma unroll
    for (int k = 0; k < K; ++k) out[k] = from_float<scalar_t>(x[k]);
  }
  __device__ __forceinline__ void finish(int64_t bi, int64_t n, const float (&x)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) h_last[(bi * N + n) * K + k] = from_float<scalar_t>(x[k]);
  }
};

// Backward problem for a forward run in direction `reverse` (docs/spec.md §1.2):
//   λ_t = g_t + [t is the forward's last step] ḡ + A_{next(t)}ᵀ λ_{next(t)},
// next(t) = t+1 (t-1 when reverse). It travels against the forward direction from λ = 0 and
// emits db_t = λ_t, dA_t = λ_t h_{prev(t)}ᵀ (h_{prev(first)} = h0 or 0); its final state is λ at
// the forward's first step, from which finish() writes dh0 = A_firstᵀ λ_first.
template <int K, typename scalar_t>
struct BackwardProblem {
  const scalar_t* A;            // [B, T, N, K, K]
  const scalar_t* h;            // [B, T, N, K] forward states
  const scalar_t* h0;           // [B, N, K] or nullptr
  const scalar_t* grad_h;       // [B, T, N, K]
  const scalar_t* grad_h_last;  // [B, N, K]
  scalar_t* dA;                 // [B, T, N, K, K]
  scalar_t* db;                 // [B, T, N, K]
  scalar_t* dh0;                // [B, N, K]
  int64_t T, N;
  bool reverse;  // direction of the *forward* recurrence

  __device__ __forceinline__ void init(int64_t, int64_t, float (&x)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) x[k] = 0.f;
  }
  __device__ __forceinline__ void load(int64_t bi, int64_t t, int64_t n, Affine<K, float>& s) const {
    const int64_t row = (bi * T + t) * N + n;
    const bool last = reverse ? t == 0 : t == T - 1;
    const scalar_t* g = grad_h + row * K;
#pragma unroll
    for (int i = 0; i < K; ++i) s.b[i] = to_float(g[i]);
    if (last) {  // first step of λ's travel: it multiplies the zero initial state; use A = 0
#pragma unroll
      for (int i = 0; i < K; ++i) {
        s.b[i] += to_float(grad_h_last[(bi * N + n) * K + i]);
#pragma unroll
        for (int j = 0; j < K; ++j) s.A[i][j] = 0.f;
      }
      return;
    }
    const int64_t next = reverse ? t - 1 : t + 1;  // in [0, T) because t is not the last step
    const scalar_t* a = A + ((bi * T + next) * N + n) * (K * K);
#pragma unroll
    for (int i = 0; i < K; ++i)
#pragma unroll
      for (int j = 0; j < K; ++j) s.A[i][j] = to_float(a[j * K + i]);  // transposed
  }
  __device__ __forceinline__ void emit(int64_t bi, int64_t t, int64_t n, const float (&lam)[K]) const {
    const int64_t row = (bi * T + t) * N + n;
    const bool first = reverse ? t == T - 1 : t == 0;
    float hp[K];
    if (first) {
#pragma unroll
      for (int j = 0; j < K; ++j) hp[j] = h0 != nullptr ? to_float(h0[(bi * N + n) * K + j]) : 0.f;
    } else {
      const scalar_t* src = h + ((bi * T + (reverse ? t + 1 : t - 1)) * N + n) * K;
#pragma unroll
      for (int j = 0; j < K; ++j) hp[j] = to_float(src[j]);
    }
#pragma unroll
    for (int i = 0; i < K; ++i) {
      db[row * K + i] = from_float<scalar_t>(lam[i]);
#pragma unroll
      for (int j = 0; j < K; ++j) dA[row * (K * K) + i * K + j] = from_float<scalar_t>(lam[i] * hp[j]);
    }
  }
  __device__ __forceinline__ void finish(int64_t bi, int64_t n, const float (&lam)[K]) const {
    const scalar_t* a = A + ((bi * T + (reverse ? T - 1 : 0)) * N + n) * (K * K);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < K; ++i) s += to_float(a[i * K + j]) * lam[i];
      dh0[(bi * N + n) * K + j] = from_float<scalar_t>(s);
    }
  }
};

// ------------------------------------------------------------------------------------ helpers
// Shared memory holds one map per (warp, lane) as structure-of-arrays [kWarps][floats][kLanes],
// so a warp's accesses fall in 32 distinct banks.
template <int K>
__device__ __forceinline__ void store_map(float (*s)[map_floats<K>()][kLanes], int w, int lane, const Affine<K, float>& m) {
#pragma unroll
  for (int i = 0; i < K; ++i) {
    s[w][K * K + i][lane] = m.b[i];
#pragma unroll
    for (int j = 0; j < K; ++j) s[w][i * K + j][lane] = m.A[i][j];
  }
}
template <int K>
__device__ __forceinline__ Affine<K, float> load_map(const float (*s)[map_floats<K>()][kLanes], int w, int lane) {
  Affine<K, float> m;
#pragma unroll
  for (int i = 0; i < K; ++i) {
    m.b[i] = s[w][K * K + i][lane];
#pragma unroll
    for (int j = 0; j < K; ++j) m.A[i][j] = s[w][i * K + j][lane];
  }
  return m;
}

// x <- A x + b
template <int K>
__device__ __forceinline__ void step_state(const Affine<K, float>& m, float (&x)[K]) {
  float y[K];
  scan::affine_apply<K, float>(m.A, m.b, x, y);
#pragma unroll
  for (int k = 0; k < K; ++k) x[k] = y[k];
}

// Number of the L steps starting at travel index i0 that lie before i_end (0..L).
template <int L>
__device__ __forceinline__ int steps_before(int64_t i0, int64_t i_end) {
  return static_cast<int>(max(int64_t(0), min(int64_t(L), i_end - i0)));
}

// ------------------------------------------------------------------------------------ kernels
// Phase 1 (only when S > 1): the composed map of each (tile, segment), per channel, into
// aggs [S, B*N, K*K+K]. Each warp composes a contiguous part of the segment, then warp 0
// composes the kWarps parts in order.
template <int K, class Problem>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) scan_aggregate_kernel(const Problem p, const Geometry g, float* __restrict__ aggs) {
  constexpr int L = StepsPerThread<K>::value;
  constexpr int M = map_floats<K>();
  __shared__ float s_map[kWarps][M][kLanes];

  const int lane = threadIdx.x % kLanes, warp = threadIdx.x / kLanes;
  const int64_t bi = blockIdx.x / g.tiles_per_row;
  const int64_t n = (blockIdx.x % g.tiles_per_row) * kLanes + lane;
  const bool active = n < g.N;
  const int64_t seg = blockIdx.y;
  const int64_t i_begin = seg * g.seg_len, i_end = min(g.T, i_begin + g.seg_len);
  const int64_t part = ceil_div(i_end - i_begin, kWarps);
  const int64_t p0 = min(i_end, i_begin + warp * part), p1 = min(i_end, p0 + part);

  Affine<K, float> agg = Affine<K, float>::identity();
  if (active) {
    // Double-buffered: the L loads of the next group are issued before the current group is
    // composed (a chain of dependent multiply-adds), so loads stay in flight during the compose.
    Affine<K, float> step[L], next[L];
    int cnt_next = steps_before<L>(p0, p1);
#pragma unroll
    for (int j = 0; j < L; ++j)
      if (j < cnt_next) p.load(bi, g.time_of(p0 + j), n, next[j]);
    for (int64_t i0 = p0; i0 < p1; i0 += L) {
      const int cnt = cnt_next;
#pragma unroll
      for (int j = 0; j < L; ++j)
        if (j < cnt) step[j] = next[j];
      cnt_next = steps_before<L>(i0 + L, p1);
#pragma unroll
      for (int j = 0; j < L; ++j)  // the next group's loads: L independent loads in flight
        if (j < cnt_next) p.load(bi, g.time_of(i0 + L + j), n, next[j]);
#pragma unroll
      for (int j = 0; j < L; ++j)
        if (j < cnt) agg = scan::compose<K, float>(step[j], agg);
    }
  }
  store_map<K>(s_map, warp, lane, agg);
  __syncthreads();
  if (warp == 0 && active) {
    Affine<K, float> total = load_map<K>(s_map, 0, lane);
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      const int64_t q0 = min(i_end, i_begin + w * part);
      if (q0 < i_end) total = scan::compose<K, float>(load_map<K>(s_map, w, lane), total);  // skip empty parts
    }
    float* out = aggs + (seg * g.B * g.N + bi * g.N + n) * M;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      out[K * K + i] = total.b[i];
#pragma unroll
      for (int j = 0; j < K; ++j) out[i * K + j] = total.A[i][j];
    }
  }
}

// Phase 2 (only when S > 1): incoming state of every segment, carries [S, B*N, K], one thread
// per channel, sequential over the S segment maps.
template <int K, class Problem>
__global__ void __launch_bounds__(kCarryThreads) scan_carry_kernel(const Problem p, const Geometry g, const float* __restrict__ aggs,
                                                                   float* __restrict__ carries) {
  constexpr int M = map_floats<K>();
  const int64_t BN = g.B * g.N;
  const int64_t q = int64_t(blockIdx.x) * kCarryThreads + threadIdx.x;  // = bi * N + n
  if (q >= BN) return;
  float x[K];
  p.init(q / g.N, q % g.N, x);
#pragma unroll 4
  for (int64_t s = 0; s < g.segments; ++s) {
#pragma unroll
    for (int k = 0; k < K; ++k) carries[(s * BN + q) * K + k] = x[k];
    const float* in = aggs + (s * BN + q) * M;
    Affine<K, float> m;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      m.b[i] = in[K * K + i];
#pragma unroll
      for (int j = 0; j < K; ++j) m.A[i][j] = in[i * K + j];
    }
    step_state<K>(m, x);
  }
}

// Phase 3 (always): re-run each (tile, segment) from its incoming state, writing the outputs;
// the last segment also writes the final state (Problem::finish). `carries` is null when
// S == 1 (the incoming state is then Problem::init).
template <int K, class Problem>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) scan_segment_kernel(const Problem p, const Geometry g, const float* __restrict__ carries) {
  constexpr int L = StepsPerThread<K>::value;
  constexpr int M = map_floats<K>();
  constexpr int64_t R = round_len<K>();
  __shared__ float s_map[kWarps][M][kLanes];  // each warp's composed map for the current round
  __shared__ float s_carry[K][kLanes];        // incoming state of the current round

  const int lane = threadIdx.x % kLanes, warp = threadIdx.x / kLanes;
  const int64_t bi = blockIdx.x / g.tiles_per_row;
  const int64_t n = (blockIdx.x % g.tiles_per_row) * kLanes + lane;
  const bool active = n < g.N;  // inactive lanes run along (barriers) but touch no memory
  const int64_t seg = blockIdx.y;
  const int64_t i_begin = seg * g.seg_len, i_end = min(g.T, i_begin + g.seg_len);

  if (warp == 0) {
    float x0[K];
    if (!active) {
#pragma unroll
      for (int k = 0; k < K; ++k) x0[k] = 0.f;
    } else if (carries != nullptr) {
#pragma unroll
      for (int k = 0; k < K; ++k) x0[k] = carries[(seg * g.B * g.N + bi * g.N + n) * K + k];
    } else {
      p.init(bi, n, x0);
    }
#pragma unroll
    for (int k = 0; k < K; ++k) s_carry[k][lane] = x0[k];
  }

  float x[K];
#pragma unroll
  for (int k = 0; k < K; ++k) x[k] = 0.f;
  // Double-buffered: the next round's L steps are loaded into `next` before this round's steps
  // are composed and applied (dependent multiply-adds, barriers, stores), so each warp keeps its
  // loads in flight across the whole round instead of waiting for them at the round's start.
  Affine<K, float> step[L], next[L];
  int cnt_next = active ? steps_before<L>(i_begin + int64_t(warp) * L, i_end) : 0;
#pragma unroll
  for (int j = 0; j < L; ++j)
    if (j < cnt_next) p.load(bi, g.time_of(i_begin + int64_t(warp) * L + j), n, next[j]);
  // The loop bounds are uniform over the block, so every thread meets every barrier.
  for (int64_t base = i_begin; base < i_end; base += R) {
    const int64_t i0 = base + int64_t(warp) * L;  // this warp's first step of the round
    const int cnt = cnt_next;
#pragma unroll
    for (int j = 0; j < L; ++j)
      if (j < cnt) step[j] = next[j];
    cnt_next = active ? steps_before<L>(i0 + R, i_end) : 0;
#pragma unroll
    for (int j = 0; j < L; ++j)  // the next round's loads, before anything waits on this round's
      if (j < cnt_next) p.load(bi, g.time_of(i0 + R + j), n, next[j]);
    Affine<K, float> agg = Affine<K, float>::identity();
#pragma unroll
    for (int j = 0; j < L; ++j)
      if (j < cnt) agg = scan::compose<K, float>(step[j], agg);
    store_map<K>(s_map, warp, lane, agg);
    __syncthreads();  // (a) s_map of this round and s_carry of the previous round are visible

#pragma unroll
    for (int k = 0; k < K; ++k) x[k] = s_carry[k][lane];
    for (int w = 0; w < warp; ++w)  // maps of the earlier warps, in time order; skip empty ones
      if (base + int64_t(w) * L < i_end) step_state<K>(load_map<K>(s_map, w, lane), x);
    __syncthreads();  // (b) all reads of s_map / s_carry are done before they are rewritten

#pragma unroll
    for (int j = 0; j < L; ++j)
      if (j < cnt) {
        step_state<K>(step[j], x);
        p.emit(bi, g.time_of(i0 + j), n, x);
      }
    // The last warp's state is the state after the whole round (warps with no steps left
    // passed the state through unchanged); barrier (a) of the next round publishes it.
    if (warp == kWarps - 1) {
#pragma unroll
      for (int k = 0; k < K; ++k) s_carry[k][lane] = x[k];
    }
  }
  if (warp == kWarps - 1 && active && seg == g.segments - 1) p.finish(bi, n, x);
}

// ------------------------------------------------------------------------------------ host side
template <int K, class Problem>
Geometry make_geometry(int64_t B, int64_t T, int64_t N, bool backwards) {
  constexpr int64_t R = round_len<K>();
  Geometry g{B, T, N, ceil_div(N, kLanes), T, 1, backwards};
  const int64_t tiles = B * g.tiles_per_row;

  int dev = 0, sms = 0, per_sm = 0;
  NLSEQ_CUDA_CHECK(cudaGetDevice(&dev));
  NLSEQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  NLSEQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, scan_segment_kernel<K, Problem>, kThreads, 0));
  const int64_t wave = int64_t(sms) * std::max(per_sm, 1);  // blocks resident at once

  // Split time only when the tiles alone would leave about a quarter of the SMs without a block
  // (one block per SM keeps ~32 KB of loads in flight per round, about what an SM's share of HBM
  // bandwidth needs: a single pass, 3 words per element, is then the faster choice), and T is
  // long enough for segments of at least two rounds.
  if (4 * tiles < 3 * int64_t(sms) && T > 2 * R) {
    const int64_t want = ceil_div(2 * wave, tiles);  // segments per tile for about two waves
    int64_t seg_len = std::max(2 * R, ceil_div(ceil_div(T, want), R) * R);
    if (ceil_div(T, seg_len) > kMaxSegments) seg_len = ceil_div(ceil_div(T, kMaxSegments), R) * R;
    const int64_t segments = ceil_div(T, seg_len);
    if (segments > 1) {
      g.seg_len = seg_len;
      g.segments = segments;
    }
  }
  return g;
}

template <int K>
size_t workspace_bytes_for(const Geometry& g) {
  if (g.segments <= 1) return 0;
  return size_t(g.segments) * size_t(g.B * g.N) * size_t(map_floats<K>() + K) * sizeof(float);
}

template <int K, class Problem>
void run_scan(const Problem& p, const Geometry& g, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int64_t tiles = g.B * g.tiles_per_row;
  if (tiles > int64_t(0x7fffffff)) throw std::invalid_argument("nlseq scan (cuda): B*ceil(N/32) exceeds the grid limit");
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(g.segments));
  const float* carries = nullptr;
  if (g.segments > 1) {
    const size_t need = workspace_bytes_for<K>(g);
    if (workspace == nullptr || workspace_bytes < need)
      throw std::invalid_argument("nlseq scan (cuda): workspace of " + std::to_string(workspace_bytes) +
                                  " bytes, need " + std::to_string(need));
    float* aggs = static_cast<float*>(workspace);
    float* carry_buf = aggs + size_t(g.segments) * size_t(g.B * g.N) * map_floats<K>();
    scan_aggregate_kernel<K, Problem><<<grid, kThreads, 0, stream>>>(p, g, aggs);
    NLSEQ_CUDA_CHECK_LAUNCH();
    const int64_t carry_blocks = ceil_div(g.B * g.N, kCarryThreads);
    scan_carry_kernel<K, Problem><<<static_cast<unsigned>(carry_blocks), kCarryThreads, 0, stream>>>(p, g, aggs, carry_buf);
    NLSEQ_CUDA_CHECK_LAUNCH();
    carries = carry_buf;
  }
  scan_segment_kernel<K, Problem><<<grid, kThreads, 0, stream>>>(p, g, carries);
  NLSEQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t scan_fwd_workspace_bytes(DType dtype, const ScanShape& s) {
  return NLSEQ_DTYPE_SWITCH(dtype, scalar_t, [&] {
    return NLSEQ_BLOCK_SWITCH(s.K, KB, [&] {
      return workspace_bytes_for<KB>(make_geometry<KB, ForwardProblem<KB, scalar_t>>(s.B, s.T, s.N, false));
    });
  });
}

void scan_fwd(DType dtype, const ScanShape& s, const void* A, const void* b, const void* h0, bool reverse, void* h,
              void* h_last, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (s.T < 1) throw std::invalid_argument("nlseq scan_fwd (cuda): T must be >= 1");
  NLSEQ_DTYPE_SWITCH(dtype, scalar_t, [&] {
    NLSEQ_BLOCK_SWITCH(s.K, KB, [&] {
      using P = ForwardProblem<KB, scalar_t>;
      const P p{static_cast<const scalar_t*>(A), static_cast<const scalar_t*>(b), static_cast<const scalar_t*>(h0),
                static_cast<scalar_t*>(h), static_cast<scalar_t*>(h_last), s.T, s.N};
      run_scan<KB, P>(p, make_geometry<KB, P>(s.B, s.T, s.N, /*backwards=*/reverse), workspace, workspace_bytes, stream);
    });
  });
}

size_t scan_bwd_workspace_bytes(DType dtype, const ScanShape& s) {
  return NLSEQ_DTYPE_SWITCH(dtype, scalar_t, [&] {
    return NLSEQ_BLOCK_SWITCH(s.K, KB, [&] {
      return workspace_bytes_for<KB>(make_geometry<KB, BackwardProblem<KB, scalar_t>>(s.B, s.T, s.N, true));
    });
  });
}

void scan_bwd(DType dtype, const ScanShape& s, const void* A, const void* h, const void* h0, const void* grad_h,
              const void* grad_h_last, bool reverse, void* dA, void* db, void* dh0, void* workspace,
              size_t workspace_bytes, cudaStream_t stream) {
  if (s.T < 1) throw std::invalid_argument("nlseq scan_bwd (cuda): T must be >= 1");
  NLSEQ_DTYPE_SWITCH(dtype, scalar_t, [&] {
    NLSEQ_BLOCK_SWITCH(s.K, KB, [&] {
      using P = BackwardProblem<KB, scalar_t>;
      const P p{static_cast<const scalar_t*>(A),      static_cast<const scalar_t*>(h),
                static_cast<const scalar_t*>(h0),     static_cast<const scalar_t*>(grad_h),
                static_cast<const scalar_t*>(grad_h_last), static_cast<scalar_t*>(dA),
                static_cast<scalar_t*>(db),           static_cast<scalar_t*>(dh0),
                s.T,                                  s.N,
                reverse};
      // λ travels against the forward direction.
      run_scan<KB, P>(p, make_geometry<KB, P>(s.B, s.T, s.N, /*backwards=*/!reverse), workspace, workspace_bytes, stream);
    });
  });
}

}  // namespace cuda
}  // namespace nlseq
