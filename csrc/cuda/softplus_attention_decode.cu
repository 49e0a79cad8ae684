// CUDA decoding kernel of softplus attention, LSSA and LSSAR (docs/spec.md §2), for few queries
// (Tq <= 16) against many keys: split over keys, partial sums per split, then a combine.
//
// Row i (query head h, position i) sees N_i keys: N_i = min(i + 1 + kv_offset, Tk) when causal,
// else Tk. With QK-norm (q̂ = q / max(‖q‖, 1e-12), likewise k̂) and c_i = ln D · ln N_i
// (0 when N_i <= 1):
//     s_ij = c_i q̂_i·k̂_j,   w_ij = softplus(s_ij),   L_i = Σ_j w_ij
//     LSSA:  o_i = Σ_j w_ij v_j / L_i
//     LSSAR: base_ij = N_i w_ij / L_i − O_i (O_i = 0 if N_i <= 3 else 1), M_i = max_j base_ij,
//            u_ij = (ReLU(base_ij) / M_i)^p in [0, 1],  o_i = Σ_j u_ij v_j / Σ_j u_ij
// |s| <= c_i keeps w and L in range without a running max. LSSAR never forms (N a)^p: M_i comes
// from the row max of s (softplus is monotonic), so it takes two passes over the keys. A row with
// no visible key, or an LSSAR row with M_i <= kZeroRowTol, gives o_i = 0 (the tolerance and every
// formula match python/nlseq/reference/softplus_attention.py).
//
// Work decomposition. A block takes one (batch, kv head), kRB query rows of that kv head's group
// (rows enumerate (query head in the group, position), so GQA reads each key tile once for all
// kRB rows) and one split of the key axis. It walks its split in tiles of kBK = 32 keys:
//   1. the K tile (and V tile) is loaded to shared memory as float, coalesced;
//   2. lane j scores key j against the warp's kRB/4 rows (dot over D from shared memory; the key's
//      norm falls out of the same loop) and writes the row's weight for key j to s_p;
//   3. thread t accumulates o[r][d] += s_p[r][j] v[j][d] for d = t, t + 128 (D <= 256).
// Each split writes partial sums (Σ weights and, except in the stats pass, Σ weight·v) to the
// workspace; a combine kernel adds the splits and divides.
//   LSSA:  split_kernel<kLssa> -> combine_kernel<false>
//   LSSAR: split_kernel<kLssarStats> (row max of s, Σ w) -> row_stats_kernel (L_i, M_i)
//          -> split_kernel<kLssarWeights> (Σ u, Σ u·v) -> combine_kernel<true>
// Accumulation is float32 throughout; inputs are converted on load, the output rounded once.
#include <math.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "softplus_attention_decode.h"

namespace nlseq {
namespace cuda {
namespace {

constexpr int kBK = 32;                          // keys per tile (one per lane when scoring)
constexpr int kRB = 16;                          // query rows per block
constexpr int kWarpsD = 4;                       // warps per block
constexpr int kThreadsD = 32 * kWarpsD;          // threads per block
constexpr int kRowsPerWarp = kRB / kWarpsD;      // rows each warp scores
constexpr int kDPerThread = static_cast<int>(kDecodeMaxHeadDim) / kThreadsD;  // output columns per thread
constexpr int kCombineThreads = 256;
constexpr float kNormEps = 1e-12f;    // QK-norm clamp (as torch.nn.functional.normalize)
constexpr float kZeroRowTol = 1e-4f;  // LSSAR all-zero row threshold on M_i (reference's ZERO_ROW_TOL)
static_assert(kRB % kWarpsD == 0 && kThreadsD >= kRB, "row tiling");
static_assert(kDPerThread * kThreadsD == kDecodeMaxHeadDim, "head dim tiling");

enum class Pass : int { kLssa = 0, kLssarStats = 1, kLssarWeights = 2 };

// ------------------------------------------------------------------------------- row math (§2)
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }

__device__ __forceinline__ int64_t visible_count(int64_t i, int64_t Tk, bool causal, int64_t kv_offset) {
  if (!causal) return Tk;
  const int64_t n = i + 1 + kv_offset;
  return n < Tk ? n : Tk;
}
__device__ __forceinline__ float length_scale(float log_d, int64_t n) { return n > 1 ? log_d * logf(float(n)) : 0.f; }
__device__ __forceinline__ float reweight_offset(int64_t n) { return n > 3 ? 1.f : 0.f; }
// M_i from the row max of s and L_i; 0 marks an all-zero row.
__device__ __forceinline__ float lssar_base_max(float row_max_s, float L, int64_t n) {
  if (!(L > 0.f)) return 0.f;
  const float M = float(n) * softplus(row_max_s) / L - reweight_offset(n);
  return M > kZeroRowTol ? M : 0.f;
}
// t^p for t in (0, 1], 0 for t <= 0.
__device__ __forceinline__ float pow_ratio(float t, float p) { return t > 0.f ? expf(p * logf(t)) : 0.f; }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// ------------------------------------------------------------------------------- geometry
struct DecodeGeometry {
  int64_t B, H, Hkv, Tq, Tk, D;
  int64_t G;          // query heads per kv head, H / Hkv
  int64_t row_tiles;  // ceil(G * Tq / kRB): blockIdx.x = (b * Hkv + hkv) * row_tiles + tile
  int64_t keys;       // keys any row sees: min(Tk, Tq + kv_offset) causal, Tk otherwise
  int64_t split_len;  // keys per split (blockIdx.y), a multiple of kBK
  int64_t splits;     // S = ceil(keys / split_len)
  int64_t kv_offset;
  bool causal;
  float log_d;  // ln D
  float p;      // LSSAR exponent (> 0), unused for LSSA
  __host__ __device__ int64_t rows() const { return B * H * Tq; }
};

// Workspace, float32: part_o [S, rows, D], part_sum [S, rows], part_max [S, rows],
// row_L [rows], row_M [rows] (the last three for LSSAR only).
struct DecodeWorkspace {
  float* part_o;
  float* part_sum;  // LSSA and LSSAR stats pass: Σ w; LSSAR weights pass: Σ u
  float* part_max;  // LSSAR stats pass: max s
  float* row_L;
  float* row_M;
};

size_t workspace_floats(const DecodeGeometry& g, bool lssar) {
  const size_t S = size_t(g.splits), rows = size_t(g.rows());
  return S * rows * size_t(g.D) + S * rows + (lssar ? S * rows + 2 * rows : 0);
}

DecodeWorkspace carve(const DecodeGeometry& g, bool lssar, void* base) {
  const size_t S = size_t(g.splits), rows = size_t(g.rows());
  DecodeWorkspace ws{};
  ws.part_o = static_cast<float*>(base);
  ws.part_sum = ws.part_o + S * rows * size_t(g.D);
  if (lssar) {
    ws.part_max = ws.part_sum + S * rows;
    ws.row_L = ws.part_max + S * rows;
    ws.row_M = ws.row_L + rows;
  }
  return ws;
}

// Row stride of the K tile in shared memory: odd, so that 32 lanes reading 32 keys at one d hit
// 32 distinct banks.
__host__ __device__ __forceinline__ int k_stride(int64_t D) { return static_cast<int>(D % 2 == 0 ? D + 1 : D); }

size_t split_smem_bytes(int64_t D) {
  return sizeof(float) * (size_t(kBK) * k_stride(D) + size_t(kBK) * D + size_t(kRB) * D + size_t(kRB) * kBK);
}

// ------------------------------------------------------------------------------- kernels
template <typename scalar_t, Pass kPass>
__global__ void __launch_bounds__(kThreadsD) decode_split_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                                                  const scalar_t* __restrict__ v, const DecodeGeometry g,
                                                                  const DecodeWorkspace ws) {
  constexpr bool kWantV = kPass != Pass::kLssarStats;
  const int D = static_cast<int>(g.D);
  const int DK = k_stride(D);
  extern __shared__ float smem[];
  float* s_k = smem;             // [kBK][DK]  key tile
  float* s_v = s_k + kBK * DK;   // [kBK][D]   value tile
  float* s_q = s_v + kBK * D;    // [kRB][D]   normalised queries
  float* s_p = s_q + kRB * D;    // [kRB][kBK] weights of the current tile
  __shared__ int64_t s_row[kRB];  // global row (b * H + h) * Tq + i, or -1 past the group's last row
  __shared__ int64_t s_n[kRB];    // N_i
  __shared__ float s_c[kRB];      // c_i
  __shared__ float s_L[kRB];      // L_i (weights pass)
  __shared__ float s_M[kRB];      // M_i (weights pass)

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t tile = blockIdx.x % g.row_tiles;
  const int64_t bh = blockIdx.x / g.row_tiles;  // b * Hkv + hkv
  const int64_t b = bh / g.Hkv, hkv = bh % g.Hkv;
  const int64_t split = blockIdx.y;
  const int64_t key0 = split * g.split_len;
  const int64_t key1 = min(g.keys, key0 + g.split_len);
  const int64_t rows = g.rows();

  if (tid < kRB) {
    const int64_t rr = tile * kRB + tid;  // row within the group: (query head in group) * Tq + i
    int64_t row = -1, n = 0;
    float c = 0.f, L = 0.f, M = 0.f;
    if (rr < g.G * g.Tq) {
      const int64_t gi = rr / g.Tq, i = rr % g.Tq;
      row = (b * g.H + hkv * g.G + gi) * g.Tq + i;
      n = visible_count(i, g.Tk, g.causal, g.kv_offset);
      c = length_scale(g.log_d, n);
      if (kPass == Pass::kLssarWeights) {
        L = ws.row_L[row];
        M = ws.row_M[row];
      }
    }
    s_row[tid] = row;
    s_n[tid] = n;
    s_c[tid] = c;
    s_L[tid] = L;
    s_M[tid] = M;
  }
  __syncthreads();

  // Normalised queries: warp w takes rows w, w + 4, ...; lanes stride over d.
  for (int r = warp; r < kRB; r += kWarpsD) {
    const int64_t row = s_row[r];
    float ss = 0.f;
    if (row >= 0)
      for (int d = lane; d < D; d += 32) {
        const float x = to_float(q[row * D + d]);
        ss += x * x;
      }
    const float inv = 1.f / fmaxf(sqrtf(warp_sum(ss)), kNormEps);
    for (int d = lane; d < D; d += 32) s_q[r * D + d] = row >= 0 ? to_float(q[row * D + d]) * inv : 0.f;
  }

  const scalar_t* kb = k + bh * g.Tk * D;  // [Tk, D] of this (batch, kv head)
  const scalar_t* vb = v + bh * g.Tk * D;
  float run_sum[kRowsPerWarp], run_max[kRowsPerWarp];  // per lane: this lane's keys only
#pragma unroll
  for (int m = 0; m < kRowsPerWarp; ++m) {
    run_sum[m] = 0.f;
    run_max[m] = -INFINITY;
  }
  float acc[kRB][kDPerThread];
#pragma unroll
  for (int r = 0; r < kRB; ++r)
#pragma unroll
    for (int e = 0; e < kDPerThread; ++e) acc[r][e] = 0.f;

  // Loop bounds are uniform over the block: every thread meets every barrier.
  for (int64_t j0 = key0; j0 < key1; j0 += kBK) {
    const int nk = static_cast<int>(min(int64_t(kBK), key1 - j0));
    __syncthreads();  // s_q written; the previous tile's s_k / s_v / s_p fully read
    // 1. Tiles: the nk rows of K (and V) from j0 on are one contiguous stretch of memory.
    for (int e = tid; e < kBK * D; e += kThreadsD) {
      const int j = e / D, d = e % D;
      const bool in = j < nk;
      s_k[j * DK + d] = in ? to_float(kb[(j0 + j) * D + d]) : 0.f;
      if (kWantV) s_v[j * D + d] = in ? to_float(vb[(j0 + j) * D + d]) : 0.f;
    }
    __syncthreads();

    // 2. Scores: lane j = key j0 + j; the warp's rows r = warp + 4 m.
    {
      const int j = lane;
      float dot[kRowsPerWarp];
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) dot[m] = 0.f;
      float ksq = 0.f;
      for (int d = 0; d < D; ++d) {
        const float kv = s_k[j * DK + d];
        ksq += kv * kv;
#pragma unroll
        for (int m = 0; m < kRowsPerWarp; ++m) dot[m] += s_q[(warp + m * kWarpsD) * D + d] * kv;  // broadcast
      }
      const float kinv = 1.f / fmaxf(sqrtf(ksq), kNormEps);
      const int64_t key = j0 + j;
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int r = warp + m * kWarpsD;
        const bool vis = j < nk && s_row[r] >= 0 && key < s_n[r];
        float weight = 0.f;
        if (vis) {
          const float s = s_c[r] * (dot[m] * kinv);
          const float w = softplus(s);
          if (kPass == Pass::kLssa) {
            run_sum[m] += w;
            weight = w;
          } else if (kPass == Pass::kLssarStats) {
            run_sum[m] += w;
            run_max[m] = fmaxf(run_max[m], s);
          } else if (s_M[r] > 0.f) {  // kLssarWeights; M = 0 marks an all-zero row
            const float base = float(s_n[r]) * w / s_L[r] - reweight_offset(s_n[r]);
            weight = base > 0.f ? pow_ratio(base / s_M[r], g.p) : 0.f;
            run_sum[m] += weight;
          }
        }
        if (kWantV) s_p[r * kBK + j] = weight;
      }
    }
    if (!kWantV) continue;  // the stats pass needs no values (the next barrier is at the loop top)
    __syncthreads();

    // 3. o[r][d] += Σ_j p[r][j] v[j][d], d = tid + kThreadsD e.
    for (int j = 0; j < nk; ++j) {
      float vv[kDPerThread];
#pragma unroll
      for (int e = 0; e < kDPerThread; ++e) {
        const int d = tid + e * kThreadsD;
        vv[e] = d < D ? s_v[j * D + d] : 0.f;
      }
#pragma unroll
      for (int r = 0; r < kRB; ++r) {
        const float pr = s_p[r * kBK + j];  // broadcast
#pragma unroll
        for (int e = 0; e < kDPerThread; ++e) acc[r][e] += pr * vv[e];
      }
    }
  }

  // Partials of this split. Every (split, row) entry is written by exactly one block.
#pragma unroll
  for (int m = 0; m < kRowsPerWarp; ++m) {
    const int r = warp + m * kWarpsD;
    const float sum = warp_sum(run_sum[m]);
    const float mx = warp_max(run_max[m]);
    if (lane == 0 && s_row[r] >= 0) {
      ws.part_sum[split * rows + s_row[r]] = sum;
      if (kPass == Pass::kLssarStats) ws.part_max[split * rows + s_row[r]] = mx;
    }
  }
  if (kWantV) {
#pragma unroll
    for (int r = 0; r < kRB; ++r) {
      if (s_row[r] < 0) continue;
      float* dst = ws.part_o + (split * rows + s_row[r]) * D;
#pragma unroll
      for (int e = 0; e < kDPerThread; ++e) {
        const int d = tid + e * kThreadsD;
        if (d < D) dst[d] = acc[r][e];
      }
    }
  }
}

// LSSAR: L_i = Σ_splits Σ w, M_i from the row max of s (0 for an all-zero row).
__global__ void __launch_bounds__(kCombineThreads) lssar_row_stats_kernel(const DecodeGeometry g, const DecodeWorkspace ws) {
  const int64_t rows = g.rows();
  const int64_t row = int64_t(blockIdx.x) * kCombineThreads + threadIdx.x;
  if (row >= rows) return;
  float L = 0.f, mx = -INFINITY;
  for (int64_t s = 0; s < g.splits; ++s) {
    L += ws.part_sum[s * rows + row];
    mx = fmaxf(mx, ws.part_max[s * rows + row]);
  }
  const int64_t n = visible_count(row % g.Tq, g.Tk, g.causal, g.kv_offset);
  ws.row_L[row] = L;
  ws.row_M[row] = lssar_base_max(mx, L, n);
}

// o = Σ_splits part_o / Σ_splits part_sum, or 0 for an all-zero row.
template <typename scalar_t, bool kLssar>
__global__ void __launch_bounds__(kCombineThreads) decode_combine_kernel(const DecodeGeometry g, const DecodeWorkspace ws,
                                                                         scalar_t* __restrict__ out) {
  const int64_t rows = g.rows();
  const int64_t e = int64_t(blockIdx.x) * kCombineThreads + threadIdx.x;
  if (e >= rows * g.D) return;
  const int64_t row = e / g.D, d = e % g.D;
  float num = 0.f, den = 0.f;
  for (int64_t s = 0; s < g.splits; ++s) {
    num += ws.part_o[(s * rows + row) * g.D + d];
    den += ws.part_sum[s * rows + row];
  }
  const bool zero = !(den > 0.f) || (kLssar && !(ws.row_M[row] > 0.f));
  // NaN in the row's scores (den or M is NaN) gives NaN, not the all-zero row (docs/numerics.md)
  const bool nan_row = den != den || (kLssar && ws.row_M[row] != ws.row_M[row]);
  out[e] = from_float<scalar_t>(nan_row ? __int_as_float(0x7fc00000) : zero ? 0.f : num / den);
}

// ------------------------------------------------------------------------------- host side
DecodeGeometry make_geometry(const DecodeShape& s, bool causal, int64_t kv_offset, float p) {
  if (s.B < 1 || s.H < 1 || s.Hkv < 1 || s.Tq < 1 || s.Tk < 1 || s.D < 1)
    throw std::invalid_argument("softplus_attention_decode (cuda): every dimension must be >= 1");
  if (s.H % s.Hkv != 0) throw std::invalid_argument("softplus_attention_decode (cuda): H must be a multiple of Hkv");
  if (s.Tq > kDecodeMaxQueries || s.D > kDecodeMaxHeadDim)
    throw std::invalid_argument("softplus_attention_decode (cuda): Tq <= 16 and D <= 256 required");
  if (kv_offset < 0) throw std::invalid_argument("softplus_attention_decode (cuda): kv_offset must be >= 0");
  DecodeGeometry g{};
  g.B = s.B, g.H = s.H, g.Hkv = s.Hkv, g.Tq = s.Tq, g.Tk = s.Tk, g.D = s.D;
  g.G = s.H / s.Hkv;
  g.row_tiles = ceil_div(g.G * g.Tq, kRB);
  g.keys = causal ? std::min(s.Tk, s.Tq + kv_offset) : s.Tk;  // the last row's N is the largest
  g.kv_offset = kv_offset;
  g.causal = causal;
  g.log_d = logf(float(s.D));
  g.p = p;

  int dev = 0, sms = 0;
  NLSEQ_CUDA_CHECK(cudaGetDevice(&dev));
  NLSEQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  // About four blocks per SM in all, split over keys as far as there are key tiles.
  const int64_t blocks = g.B * g.Hkv * g.row_tiles;
  const int64_t key_tiles = ceil_div(g.keys, kBK);
  const int64_t want = std::max<int64_t>(1, std::min(key_tiles, ceil_div(4 * int64_t(sms), blocks)));
  g.split_len = ceil_div(key_tiles, want) * kBK;
  if (ceil_div(g.keys, g.split_len) > 65535) g.split_len = ceil_div(ceil_div(g.keys, 65535), kBK) * kBK;
  g.splits = ceil_div(g.keys, g.split_len);
  return g;
}

template <typename scalar_t, Pass kPass>
void launch_split(const DecodeGeometry& g, const void* q, const void* k, const void* v, const DecodeWorkspace& ws,
                  cudaStream_t stream) {
  auto kernel = decode_split_kernel<scalar_t, kPass>;
  const size_t smem = split_smem_bytes(g.D);
  NLSEQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int64_t blocks = g.B * g.Hkv * g.row_tiles;
  if (blocks > int64_t(0x7fffffff)) throw std::invalid_argument("softplus_attention_decode (cuda): grid too large");
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(g.splits));
  kernel<<<grid, kThreadsD, smem, stream>>>(static_cast<const scalar_t*>(q), static_cast<const scalar_t*>(k),
                                            static_cast<const scalar_t*>(v), g, ws);
  NLSEQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t softplus_attention_decode_workspace_bytes(DType, const DecodeShape& s, bool causal, int64_t kv_offset) {
  // LSSAR's extra buffers are counted always: the size does not depend on p.
  return workspace_floats(make_geometry(s, causal, kv_offset, 1.f), /*lssar=*/true) * sizeof(float);
}

void softplus_attention_decode(DType dtype, const DecodeShape& s, const void* q, const void* k, const void* v,
                               bool causal, float reweight_p, int64_t kv_offset, void* out, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream) {
  const bool lssar = reweight_p > 0.f;
  const DecodeGeometry g = make_geometry(s, causal, kv_offset, reweight_p);
  const size_t need = workspace_floats(g, lssar) * sizeof(float);
  if (workspace == nullptr || workspace_bytes < need)
    throw std::invalid_argument("softplus_attention_decode (cuda): workspace of " + std::to_string(workspace_bytes) +
                                " bytes, need " + std::to_string(need));
  const DecodeWorkspace ws = carve(g, lssar, workspace);
  const unsigned row_blocks = static_cast<unsigned>(ceil_div(g.rows(), kCombineThreads));
  const unsigned out_blocks = static_cast<unsigned>(ceil_div(g.rows() * g.D, kCombineThreads));
  NLSEQ_DTYPE_SWITCH(dtype, scalar_t, [&] {
    if (!lssar) {
      launch_split<scalar_t, Pass::kLssa>(g, q, k, v, ws, stream);
      decode_combine_kernel<scalar_t, false><<<out_blocks, kCombineThreads, 0, stream>>>(g, ws, static_cast<scalar_t*>(out));
      NLSEQ_CUDA_CHECK_LAUNCH();
    } else {
      launch_split<scalar_t, Pass::kLssarStats>(g, q, k, v, ws, stream);
      lssar_row_stats_kernel<<<row_blocks, kCombineThreads, 0, stream>>>(g, ws);
      NLSEQ_CUDA_CHECK_LAUNCH();
      launch_split<scalar_t, Pass::kLssarWeights>(g, q, k, v, ws, stream);
      decode_combine_kernel<scalar_t, true><<<out_blocks, kCombineThreads, 0, stream>>>(g, ws, static_cast<scalar_t*>(out));
      NLSEQ_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace cuda
}  // namespace nlseq
