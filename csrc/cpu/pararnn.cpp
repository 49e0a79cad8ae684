// C++ CPU kernels of the built-in ParaRNN cells (docs/spec.md §1.1–1.3).
//
// The built-in cells are diagonal in the channel index, so given U = Wx + b every (batch row,
// channel) pair is an independent scalar (GRU) or 2-vector (LSTM) recurrence. On a CPU with few
// cores the exact sequential pass is therefore the fastest solver: work items are (batch row,
// block of kChannels channels), each runs over t once, and the inner loop over the block's
// channels reads contiguous memory and vectorises (the cell math comes from nlseq/pararnn.h with
// a branch-free exp, FastMath below). The fused backward is the same sweep in reverse time,
// carrying λ_t = g_t + J_{t+1}ᵀ λ_{t+1} and emitting every per-step VJP (docs/spec.md §1.2); dA and dP
// are reduced over t inside the item and over the batch rows afterwards (deterministic).
// The Newton forward linearises all steps in parallel and solves each Newton step with the CPU
// scan kernel of csrc/cpu/scan.cpp.
#include "pararnn.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "blas.h"
#include "nlseq/pararnn.h"
#include "scan.h"

// Kernels are compiled for AVX-512, AVX2 and the baseline, chosen at load time (simd.h), so the
// shipped binary runs everywhere and still vectorises the channel loop as wide as it can. On the
// 2-core AVX-512 EPYC of README.md's figures the AVX-512 clone makes the GRU sequential forward
// ~1.4x faster than the AVX2 one (forward+backward ~1.1x).
#include "simd.h"

namespace nlseq {
namespace cpu {
namespace {

constexpr int64_t kChannels = 64;  // channels per work item: a contiguous run of each U row

// Asks the kernel for transparent huge pages behind a large output before it is first written.
// An output of tens of MB is a fresh mmap on every call (glibc serves blocks above 32 MB that
// way), and on the VM of docs/cpu_rnn.md faulting it in 4 KiB pages cost about as much as the
// GEMMs that fill it (a 50 MB U: ~30 ms of page faults, ~12 ms with huge pages). This is what
// PyTorch's THP_MEM_ALLOC_ENABLE=1 does for every allocation, done here for the outputs of
// these kernels only. Only whole 2 MiB pages inside the tensor's bytes are advised, so no other
// allocation shares them; where THP is off ("never") or unsupported the call does nothing.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  constexpr size_t kMinBytes = size_t(8) << 20;  // below 4 huge pages the faults are cheap anyway
  const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
  if (bytes < kMinBytes) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t a = (p + kHuge - 1) & ~(kHuge - 1), e = (p + bytes) & ~(kHuge - 1);
  if (e > a) (void)madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);  // advisory: errors are ignored
#else
  (void)t;
#endif
}

// Runs body(w, w + 1) for every work item w in [0, n), each claimed by whichever thread is free
// next (an atomic counter) rather than at::parallel_for's fixed share per thread: on a shared
// machine a thread that loses its core for a while leaves its remaining items to the others
// instead of holding the whole call back. Every item writes only its own outputs (reductions
// over items happen afterwards in a fixed order), so results do not depend on who ran what.
template <typename F>
void parallel_items(int64_t n, const F& body) {
  if (n <= 0) return;
  const int64_t nt = std::min<int64_t>(n, at::get_num_threads());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    for (int64_t w = next.fetch_add(1); w < n; w = next.fetch_add(1)) body(w, w + 1);
  });
}

// exp and tanh without branches or calls, so that the channel loop vectorises. Float: a
// Cody–Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 Taylor polynomial for e^r
// (truncation < 1e-8 relative) and 2^n built in the exponent bits; the input is clamped to
// [-87, 88] so the result is a normal float (σ and tanh saturate correctly at the ends).
// Double: the C library (float64 is the accuracy path, not the fast one).
// c ? a : b as bit operations: GCC does not if-convert a float select under -ftrapping-math (the
// default), which would stop the channel loop from vectorising.
__attribute__((always_inline)) inline float select(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  uint32_t ab, bb;
  std::memcpy(&ab, &a, sizeof(ab));
  std::memcpy(&bb, &b, sizeof(bb));
  const uint32_t r = (ab & m) | (bb & ~m);
  float out;
  std::memcpy(&out, &r, sizeof(out));
  return out;
}

struct FastMath {
  __attribute__((always_inline)) static inline float exp(float x) {
    x = select(x < -87.0f, -87.0f, x);
    x = select(x > 88.0f, 88.0f, x);
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float n = (x * 1.44269504088896341f + shifter) - shifter;
    const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
  }
  __attribute__((always_inline)) static inline float tanh(float x) { return 1.0f - 2.0f / (1.0f + exp(2.0f * x)); }
  static inline double exp(double x) { return std::exp(x); }
  static inline double tanh(double x) { return std::tanh(x); }
};

template <typename acc>
using GruCell = pararnn::Gru<acc, FastMath>;
template <typename acc>
using LstmCell = pararnn::Lstm<acc, FastMath>;

// Calls fn.template operator()<Cell>() with the cell type for (kind, acc).
template <typename acc, typename Fn>
void cell_switch(pararnn::CellKind kind, Fn&& fn) {
  if (kind == pararnn::CellKind::kGru) {
    fn(GruCell<acc>{});
  } else {
    fn(LstmCell<acc>{});
  }
}

// Per-channel parameters of one block of channels, in the accumulation type.
template <typename acc>
struct BlockParams {
  acc a[3][kChannels];
  acc p[2][kChannels];
};

template <typename acc>
inline void load_params(const acc* A, const acc* P, int64_t N, int64_t n0, int64_t nb, BlockParams<acc>& bp) {
  for (int g = 0; g < 3; ++g)
    for (int64_t j = 0; j < nb; ++j) bp.a[g][j] = A[g * N + n0 + j];
  for (int g = 0; g < 2; ++g)
    for (int64_t j = 0; j < nb; ++j) bp.p[g][j] = P ? P[g * N + n0 + j] : acc(0);
}

// ---------------------------------------------------------------- sequential forward
// One item: batch row bi, channels [n0, n0 + nb); states st[k][j] carried in acc.
template <typename Cell, typename scalar_t, typename acc>
__attribute__((always_inline)) inline void seq_fwd_item(const scalar_t* __restrict__ U, const BlockParams<acc>& bp,
                                                        acc (*__restrict__ st)[kChannels], scalar_t* __restrict__ S_all,
                                                        int64_t T, int64_t N, int64_t bi, int64_t n0, int64_t nb) {
  constexpr int S = Cell::S;
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* u_row = U + (bi * T + t) * 3 * N + n0;
    scalar_t* s_row = S_all + (bi * T + t) * S * N + n0;
    for (int64_t j = 0; j < nb; ++j) {
      const acc u[3] = {static_cast<acc>(u_row[j]), static_cast<acc>(u_row[N + j]), static_cast<acc>(u_row[2 * N + j])};
      const acc a[3] = {bp.a[0][j], bp.a[1][j], bp.a[2][j]};
      const acc p[2] = {bp.p[0][j], bp.p[1][j]};
      acc sp[S], s[S];
      for (int k = 0; k < S; ++k) sp[k] = st[k][j];
      Cell::step(u, a, p, sp, s);
      for (int k = 0; k < S; ++k) {
        st[k][j] = s[k];
        s_row[k * N + j] = static_cast<scalar_t>(s[k]);
      }
    }
  }
}

#define NLSEQ_SEQ_FWD_INSTANCE(NAME, CELL, SCALAR)                                                             \
  NLSEQ_CLONES void NAME(const SCALAR* U, const BlockParams<acc_t<SCALAR>>& bp, acc_t<SCALAR> (*st)[kChannels], \
                         SCALAR* S_all, int64_t T, int64_t N, int64_t bi, int64_t n0, int64_t nb) {             \
    seq_fwd_item<CELL<acc_t<SCALAR>>, SCALAR, acc_t<SCALAR>>(U, bp, st, S_all, T, N, bi, n0, nb);             \
  }
NLSEQ_SEQ_FWD_INSTANCE(seq_fwd_gru_f32, GruCell, float)
NLSEQ_SEQ_FWD_INSTANCE(seq_fwd_lstm_f32, LstmCell, float)

template <typename scalar_t>
void seq_fwd_dispatch(pararnn::CellKind kind, const scalar_t* U, const BlockParams<acc_t<scalar_t>>& bp,
                      acc_t<scalar_t> (*st)[kChannels], scalar_t* S_all, int64_t T, int64_t N, int64_t bi, int64_t n0,
                      int64_t nb) {
  if constexpr (std::is_same<scalar_t, float>::value) {  // the hot path: multi-versioned
    if (kind == pararnn::CellKind::kGru)
      seq_fwd_gru_f32(U, bp, st, S_all, T, N, bi, n0, nb);
    else
      seq_fwd_lstm_f32(U, bp, st, S_all, T, N, bi, n0, nb);
  } else {
    cell_switch<acc_t<scalar_t>>(kind, [&](auto cell) {
      seq_fwd_item<decltype(cell), scalar_t, acc_t<scalar_t>>(U, bp, st, S_all, T, N, bi, n0, nb);
    });
  }
}

// ---------------------------------------------------------------- fused backward
template <typename Cell, typename scalar_t, typename acc>
__attribute__((always_inline)) inline void bwd_item(const scalar_t* __restrict__ U, const BlockParams<acc>& bp,
                                                    const scalar_t* __restrict__ s0, const scalar_t* __restrict__ S_all,
                                                    const scalar_t* __restrict__ dS, acc (*__restrict__ lam)[kChannels],
                                                    scalar_t* __restrict__ dU, acc (*__restrict__ da_sum)[kChannels],
                                                    acc (*__restrict__ dp_sum)[kChannels], int64_t T, int64_t N,
                                                    int64_t bi, int64_t n0, int64_t nb) {
  constexpr int S = Cell::S;
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* u_row = U + (bi * T + t) * 3 * N + n0;
    const scalar_t* g_row = dS + (bi * T + t) * S * N + n0;
    const scalar_t* sp_row = t > 0 ? S_all + (bi * T + t - 1) * S * N + n0 : s0 + bi * S * N + n0;
    scalar_t* du_row = dU + (bi * T + t) * 3 * N + n0;
    for (int64_t j = 0; j < nb; ++j) {
      const acc u[3] = {static_cast<acc>(u_row[j]), static_cast<acc>(u_row[N + j]), static_cast<acc>(u_row[2 * N + j])};
      const acc a[3] = {bp.a[0][j], bp.a[1][j], bp.a[2][j]};
      const acc p[2] = {bp.p[0][j], bp.p[1][j]};
      acc sp[S], l[S], du[3], da[3], dp[2], dsp[S];
      for (int k = 0; k < S; ++k) {
        sp[k] = static_cast<acc>(sp_row[k * N + j]);
        l[k] = lam[k][j] + static_cast<acc>(g_row[k * N + j]);  // λ_t = g_t + J_{t+1}ᵀ λ_{t+1}
      }
      Cell::vjp(u, a, p, sp, l, du, da, dp, dsp);
      for (int g = 0; g < 3; ++g) {
        du_row[g * N + j] = static_cast<scalar_t>(du[g]);
        da_sum[g][j] += da[g];
      }
      for (int g = 0; g < 2; ++g) dp_sum[g][j] += dp[g];
      for (int k = 0; k < S; ++k) lam[k][j] = dsp[k];  // J_tᵀ λ_t, carried to t − 1
    }
  }
}

#define NLSEQ_BWD_INSTANCE(NAME, CELL, SCALAR)                                                                   \
  NLSEQ_CLONES void NAME(const SCALAR* U, const BlockParams<acc_t<SCALAR>>& bp, const SCALAR* s0,                \
                         const SCALAR* S_all, const SCALAR* dS, acc_t<SCALAR> (*lam)[kChannels], SCALAR* dU,        \
                         acc_t<SCALAR> (*da)[kChannels], acc_t<SCALAR> (*dp)[kChannels], int64_t T, int64_t N,     \
                         int64_t bi, int64_t n0, int64_t nb) {                                                  \
    bwd_item<CELL<acc_t<SCALAR>>, SCALAR, acc_t<SCALAR>>(U, bp, s0, S_all, dS, lam, dU, da, dp, T, N, bi, n0, nb); \
  }
NLSEQ_BWD_INSTANCE(bwd_gru_f32, GruCell, float)
NLSEQ_BWD_INSTANCE(bwd_lstm_f32, LstmCell, float)

template <typename scalar_t>
void bwd_dispatch(pararnn::CellKind kind, const scalar_t* U, const BlockParams<acc_t<scalar_t>>& bp, const scalar_t* s0,
                  const scalar_t* S_all, const scalar_t* dS, acc_t<scalar_t> (*lam)[kChannels], scalar_t* dU,
                  acc_t<scalar_t> (*da)[kChannels], acc_t<scalar_t> (*dp)[kChannels], int64_t T, int64_t N, int64_t bi,
                  int64_t n0, int64_t nb) {
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (kind == pararnn::CellKind::kGru)
      bwd_gru_f32(U, bp, s0, S_all, dS, lam, dU, da, dp, T, N, bi, n0, nb);
    else
      bwd_lstm_f32(U, bp, s0, S_all, dS, lam, dU, da, dp, T, N, bi, n0, nb);
  } else {
    cell_switch<acc_t<scalar_t>>(kind, [&](auto cell) {
      bwd_item<decltype(cell), scalar_t, acc_t<scalar_t>>(U, bp, s0, S_all, dS, lam, dU, da, dp, T, N, bi, n0, nb);
    });
  }
}

// ---------------------------------------------------------------- Newton linearisation, one (b, t) row
// Row of the iterate in the scan layout: h_row [N, S] (acc); prev [N, S] the state before the
// step (s0 or the previous row); writes J [N, S, S], r = f − J prev [N, S] and |h − f| per
// element into dev [N·S] (reduced by the caller: a max with NaN propagation does not vectorise).
template <typename Cell, typename scalar_t, typename acc>
__attribute__((always_inline)) inline void linearise_row(const scalar_t* __restrict__ u_row,
                                                         const acc* __restrict__ a, const acc* __restrict__ p,
                                                         const acc* __restrict__ prev, const acc* __restrict__ h_row,
                                                         acc* __restrict__ jac, acc* __restrict__ rhs,
                                                         acc* __restrict__ dev, int64_t N) {
  constexpr int S = Cell::S;
  for (int64_t n = 0; n < N; ++n) {
    const acc uu[3] = {static_cast<acc>(u_row[n]), static_cast<acc>(u_row[N + n]), static_cast<acc>(u_row[2 * N + n])};
    const acc aa[3] = {a[n], a[N + n], a[2 * N + n]};
    const acc pp[2] = {p[n], p[N + n]};
    acc sp[S], f[S], jj[S][S];
    for (int k = 0; k < S; ++k) sp[k] = prev[n * S + k];
    Cell::step_jac(uu, aa, pp, sp, f, jj);
    for (int i = 0; i < S; ++i) {
      acc ri = f[i];
      for (int k = 0; k < S; ++k) {
        jac[(n * S + i) * S + k] = jj[i][k];
        ri -= jj[i][k] * sp[k];
      }
      rhs[n * S + i] = ri;
      const acc d = h_row[n * S + i] - f[i];
      dev[n * S + i] = std::abs(d);
    }
  }
}

// Initial guess of one row: h_row = f(prev, x_t) with prev = s0 (t = 0) or 0.
template <typename Cell, typename scalar_t, typename acc>
__attribute__((always_inline)) inline void initial_row(const scalar_t* __restrict__ u_row, const acc* __restrict__ a,
                                                       const acc* __restrict__ p, const acc* __restrict__ prev,
                                                       acc* __restrict__ h_row, int64_t N) {
  constexpr int S = Cell::S;
  for (int64_t n = 0; n < N; ++n) {
    const acc uu[3] = {static_cast<acc>(u_row[n]), static_cast<acc>(u_row[N + n]), static_cast<acc>(u_row[2 * N + n])};
    const acc aa[3] = {a[n], a[N + n], a[2 * N + n]};
    const acc pp[2] = {p[n], p[N + n]};
    acc sp[S], f[S];
    for (int k = 0; k < S; ++k) sp[k] = prev[n * S + k];
    Cell::step(uu, aa, pp, sp, f);
    for (int k = 0; k < S; ++k) h_row[n * S + k] = f[k];
  }
}

#define NLSEQ_NEWTON_INSTANCES(SUFFIX, CELL)                                                                    \
  NLSEQ_CLONES void linearise_row_##SUFFIX(const float* u_row, const float* a, const float* p, const float* prev, \
                                           const float* h_row, float* jac, float* rhs, float* dev, int64_t N) {     \
    linearise_row<CELL<float>, float, float>(u_row, a, p, prev, h_row, jac, rhs, dev, N);                       \
  }                                                                                                              \
  NLSEQ_CLONES void initial_row_##SUFFIX(const float* u_row, const float* a, const float* p, const float* prev,   \
                                         float* h_row, int64_t N) {                                              \
    initial_row<CELL<float>, float, float>(u_row, a, p, prev, h_row, N);                                        \
  }
NLSEQ_NEWTON_INSTANCES(gru_f32, GruCell)
NLSEQ_NEWTON_INSTANCES(lstm_f32, LstmCell)

template <typename scalar_t, typename acc>
void linearise_dispatch(pararnn::CellKind kind, const scalar_t* u_row, const acc* a, const acc* p, const acc* prev,
                        const acc* h_row, acc* jac, acc* rhs, acc* dev, int64_t N) {
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (kind == pararnn::CellKind::kGru)
      linearise_row_gru_f32(u_row, a, p, prev, h_row, jac, rhs, dev, N);
    else
      linearise_row_lstm_f32(u_row, a, p, prev, h_row, jac, rhs, dev, N);
  } else {
    cell_switch<acc>(kind, [&](auto cell) {
      linearise_row<decltype(cell), scalar_t, acc>(u_row, a, p, prev, h_row, jac, rhs, dev, N);
    });
  }
}

template <typename scalar_t, typename acc>
void initial_dispatch(pararnn::CellKind kind, const scalar_t* u_row, const acc* a, const acc* p, const acc* prev,
                      acc* h_row, int64_t N) {
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (kind == pararnn::CellKind::kGru)
      initial_row_gru_f32(u_row, a, p, prev, h_row, N);
    else
      initial_row_lstm_f32(u_row, a, p, prev, h_row, N);
  } else {
    cell_switch<acc>(kind, [&](auto cell) { initial_row<decltype(cell), scalar_t, acc>(u_row, a, p, prev, h_row, N); });
  }
}

}  // namespace

void pararnn_seq_fwd(pararnn::CellKind cell, const at::Tensor& U, const at::Tensor& A,
                     const c10::optional<at::Tensor>& P, const c10::optional<at::Tensor>& s0, at::Tensor& S_all) {
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  const int S = pararnn::state_size(cell);
  const int64_t nblk = (N + kChannels - 1) / kChannels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, U.scalar_type(), "nlseq_pararnn_seq_fwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* u = U.data_ptr<scalar_t>();
    const acc* a = A.data_ptr<acc>();
    const acc* p = P.has_value() ? P->data_ptr<acc>() : nullptr;
    const scalar_t* init = s0.has_value() ? s0->data_ptr<scalar_t>() : nullptr;
    advise_huge_pages(S_all);
    scalar_t* out = S_all.data_ptr<scalar_t>();
    parallel_items(B * nblk, [&](int64_t w0, int64_t w1) {
      BlockParams<acc> bp;
      acc st[2][kChannels];
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t bi = w / nblk, n0 = (w % nblk) * kChannels, nb = std::min(kChannels, N - n0);
        load_params(a, p, N, n0, nb, bp);
        for (int k = 0; k < S && k < 2; ++k)
          for (int64_t j = 0; j < nb; ++j)
            st[k][j] = init ? static_cast<acc>(init[(bi * S + k) * N + n0 + j]) : acc(0);
        seq_fwd_dispatch<scalar_t>(cell, u, bp, st, out, T, N, bi, n0, nb);
      }
    });
  });
}

void pararnn_bwd(pararnn::CellKind cell, const at::Tensor& U, const at::Tensor& A, const c10::optional<at::Tensor>& P,
                 const c10::optional<at::Tensor>& s0, const at::Tensor& S_all, const at::Tensor& dS,
                 const at::Tensor& ds_last, at::Tensor& dU, at::Tensor& dA, at::Tensor& dP, at::Tensor& ds0) {
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  const int S = pararnn::state_size(cell);
  const int64_t nblk = (N + kChannels - 1) / kChannels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, U.scalar_type(), "nlseq_pararnn_bwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* u = U.data_ptr<scalar_t>();
    const acc* a = A.data_ptr<acc>();
    const acc* p = P.has_value() ? P->data_ptr<acc>() : nullptr;
    // A zero initial state is materialised so that the channel loop has no branch.
    const at::Tensor init_t = s0.has_value() ? *s0 : at::zeros({B, S, N}, U.options());
    const scalar_t* init = init_t.data_ptr<scalar_t>();
    const scalar_t* states = S_all.data_ptr<scalar_t>();
    const scalar_t* g = dS.data_ptr<scalar_t>();
    const scalar_t* g_last = ds_last.data_ptr<scalar_t>();
    advise_huge_pages(dU);
    scalar_t* du = dU.data_ptr<scalar_t>();
    scalar_t* dinit = ds0.data_ptr<scalar_t>();
    // Per batch row partial sums of dA, dP ([B, 3, N], [B, 2, N]), reduced over B below.
    std::vector<acc> da_part(B * 3 * N, acc(0)), dp_part(B * 2 * N, acc(0));
    parallel_items(B * nblk, [&](int64_t w0, int64_t w1) {
      BlockParams<acc> bp;
      acc lam[2][kChannels], da[3][kChannels], dp[2][kChannels];
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t bi = w / nblk, n0 = (w % nblk) * kChannels, nb = std::min(kChannels, N - n0);
        load_params(a, p, N, n0, nb, bp);
        for (int64_t j = 0; j < nb; ++j) {
          for (int k = 0; k < S; ++k) lam[k][j] = static_cast<acc>(g_last[(bi * S + k) * N + n0 + j]);
          for (int k = 0; k < 3; ++k) da[k][j] = acc(0);
          for (int k = 0; k < 2; ++k) dp[k][j] = acc(0);
        }
        bwd_dispatch<scalar_t>(cell, u, bp, init, states, g, lam, du, da, dp, T, N, bi, n0, nb);
        for (int64_t j = 0; j < nb; ++j) {
          for (int k = 0; k < S; ++k) dinit[(bi * S + k) * N + n0 + j] = static_cast<scalar_t>(lam[k][j]);
          for (int k = 0; k < 3; ++k) da_part[(bi * 3 + k) * N + n0 + j] = da[k][j];
          for (int k = 0; k < 2; ++k) dp_part[(bi * 2 + k) * N + n0 + j] = dp[k][j];
        }
      }
    });
    acc* da_out = dA.data_ptr<acc>();
    acc* dp_out = dP.data_ptr<acc>();
    for (int64_t i = 0; i < 3 * N; ++i) {
      acc s = acc(0);
      for (int64_t bi = 0; bi < B; ++bi) s += da_part[bi * 3 * N + i];
      da_out[i] = s;
    }
    for (int64_t i = 0; i < 2 * N; ++i) {
      acc s = acc(0);
      for (int64_t bi = 0; bi < B; ++bi) s += dp_part[bi * 2 * N + i];
      dp_out[i] = s;
    }
  });
}

// ---------------------------------------------------------------- Newton forward
// The iterate lives in the scan's block layout H [B, T, N, S] in acc; one linearisation fills
// J [B, T, N, S, S] and the right-hand side r_t = f_t − J_t s_{t−1}, so that the next iterate is
// the solution of s_t = J_t s_{t−1} + r_t (plain Newton, docs/spec.md §1.1), and returns the residual
// max_t |H_t − f_t| of the current iterate.
std::pair<int64_t, double> pararnn_newton_fwd(pararnn::CellKind cell, const at::Tensor& U, const at::Tensor& A,
                                              const c10::optional<at::Tensor>& P,
                                              const c10::optional<at::Tensor>& s0, int64_t max_iters, double tol,
                                              at::Tensor& S_all) {
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  const int S = pararnn::state_size(cell);
  int64_t iters = 0;
  double residual = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, U.scalar_type(), "nlseq_pararnn_newton_fwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc>::value;
    const auto opts = U.options().dtype(acc_dtype);
    const scalar_t* u = U.data_ptr<scalar_t>();
    const acc* a = A.data_ptr<acc>();
    // s0 in the scan layout [B, N, S], acc
    at::Tensor init = s0.has_value() ? s0->to(acc_dtype).permute({0, 2, 1}).contiguous() : at::zeros({B, N, S}, opts);
    const acc* h0 = init.data_ptr<acc>();
    at::Tensor H = at::empty({B, T, N, S}, opts);
    at::Tensor J = at::empty({B, T, N, S, S}, opts);
    at::Tensor R = at::empty({B, T, N, S}, opts);
    at::Tensor H_last = at::empty({B, N, S}, opts);
    std::vector<acc> row_max(B * T);

    // P as a [2, N] buffer even for the GRU (zeros), so the row kernels need no branch.
    const at::Tensor P_t = P.has_value() ? *P : at::zeros({2, N}, opts);
    const acc* pz = P_t.data_ptr<acc>();
    const at::Tensor zero_prev = at::zeros({N, S}, opts);

    // One pass over all rows (b, t): the initial guess f(0, x_t) (s0 at t = 0), or the
    // linearisation at the current iterate H.
    auto evaluate = [&](bool initial) {
      acc* h = H.data_ptr<acc>();
      acc* jac = J.data_ptr<acc>();
      acc* rhs = R.data_ptr<acc>();
      const acc* zp = zero_prev.data_ptr<acc>();
      at::parallel_for(0, B * T, 16, [&](int64_t r0, int64_t r1) {
        std::vector<acc> dev(N * S);
        for (int64_t row = r0; row < r1; ++row) {
          const int64_t bi = row / T, t = row % T;
          const scalar_t* u_row = u + row * 3 * N;
          if (initial) {
            const acc* prev = t > 0 ? zp : h0 + bi * N * S;
            initial_dispatch<scalar_t, acc>(cell, u_row, a, pz, prev, h + row * N * S, N);
            continue;
          }
          const acc* prev = t > 0 ? h + (row - 1) * N * S : h0 + bi * N * S;
          linearise_dispatch<scalar_t, acc>(cell, u_row, a, pz, prev, h + row * N * S, jac + row * N * S * S,
                                            rhs + row * N * S, dev.data(), N);
          row_max[row] = nan_max(dev.data(), static_cast<int64_t>(dev.size()));
        }
      });
    };
    // rows are written in parallel, in place: the initial guess must not read H, and the
    // linearisation only reads H (writing J, R), so no row sees another row's new value.
    evaluate(true);
    for (int64_t k = 0;; ++k) {
      evaluate(false);
      residual = static_cast<double>(nan_max(row_max.data(), static_cast<int64_t>(row_max.size())));
      // A NaN or inf residual stops at once: no further iteration can make it finite (issue 12).
      if (residual <= tol || k >= max_iters || !std::isfinite(residual)) break;
      scan_fwd(J, R, init, false, H, H_last);  // H <- solution of the linearised system
      ++iters;
    }
    S_all.copy_(H.permute({0, 1, 3, 2}));
  });
  return {iters, residual};
}

// ---------------------------------------------------------------- input projection U = Wx + b
// Block-diagonal W [heads, ih, G, nh]: U[m, g, h·nh + j] = Σ_i x[m, h·ih + i] W[h, i, g, j] + b[g, h·nh + j].
// Work items are blocks of rows of x (a fixed partition, see proj_blocks); each runs its heads·G
// GEMMs single-threaded (a BLAS called inside a parallel region does not start threads of its
// own), straight into U's [rows, G, N] layout, the one the recurrence reads (row stride G·N, unit
// column stride: the BLAS takes it as the leading dimension, nothing is copied). Why not torch's
// batched GEMMs: with 2 threads, the G·heads GEMMs of N/heads columns each are split by the BLAS
// across both threads per call and run ~2x slower than one GEMM of the same FLOPs; splitting the
// rows over the threads gives each thread whole GEMMs.
//
// float and double call the BLAS that libtorch links directly (csrc/cpu/blas.h): through
// at::addmm_ each of the 384 small GEMMs of a B4 T4096 N256 forward also paid the dispatcher and
// ATen's argument checks; the direct call is ~10-15% faster (docs/cpu_rnn.md). Where torch has
// no such entry point, and for half and bfloat16, the ATen path below runs.
namespace {
constexpr int64_t kProjRows = 256;  // rows per block: U block (256 x 3N) stays in L2 between the bias copy and the GEMMs
constexpr int64_t kDwRows = 4096;   // rows per GEMM of the dW sum (a fixed chunking: the bits do not depend on threads)

// Row blocks of [0, M): at least one per thread, at most kProjRows rows each.
int64_t proj_blocks(int64_t M) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(std::min<int64_t>(M, threads), (M + kProjRows - 1) / kProjRows);
}

// Runs body(m0, m1) for every non-empty row block [m0, m1) of [0, M) (proj_blocks), each claimed
// by whichever thread is free next.
template <typename Body>
void for_each_row_block(int64_t M, Body body) {
  const int64_t nblk = proj_blocks(M);
  parallel_items(nblk, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t m0 = M * c / nblk, m1 = M * (c + 1) / nblk;
      if (m1 > m0) body(m0, m1);
    }
  });
}

template <typename T>
void projection_fwd_blas(const T* x, const T* W, const T* b, T* U, int64_t M, int64_t heads, int64_t ih, int64_t G,
                         int64_t nh) {
  const int64_t N = heads * nh, I = heads * ih, ldu = G * N, ldw = G * nh;
  for_each_row_block(M, [&](int64_t m0, int64_t m1) {
    const int64_t rows = m1 - m0;
    T* u = U + m0 * ldu;
    // each U row [G, N] starts as b (same layout); the GEMMs accumulate onto it (beta = 1)
    for (int64_t m = 0; m < rows; ++m) std::memcpy(u + m * ldu, b, sizeof(T) * ldu);
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t g = 0; g < G; ++g)
        blas::gemm_ld<T>(false, false, rows, nh, ih, x + m0 * I + h * ih, I, W + h * ih * ldw + g * nh, ldw, T(1),
                         u + g * N + h * nh, ldu);
  });
}

template <typename T>
void projection_dx_blas(const T* W, const T* dU, T* dx, int64_t M, int64_t heads, int64_t ih, int64_t G, int64_t nh) {
  const int64_t N = heads * nh, I = heads * ih, ldu = G * N, ldw = G * nh;
  for_each_row_block(M, [&](int64_t m0, int64_t m1) {
    // dx[m, h·ih + i] = Σ_g dU[m, g, h·nh + :] · W[h, i, g, :]: G GEMMs per head, the first overwrites
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t g = 0; g < G; ++g)
        blas::gemm_ld<T>(false, true, m1 - m0, ih, nh, dU + m0 * ldu + g * N + h * nh, ldu, W + h * ih * ldw + g * nh,
                         ldw, g == 0 ? T(0) : T(1), dx + m0 * I + h * ih, I);
  });
}

template <typename T>
void projection_dw_blas(const T* x, const T* dU, T* dW, int64_t M, int64_t heads, int64_t ih, int64_t G, int64_t nh,
                        int64_t split) {
  const int64_t N = heads * nh, I = heads * ih, ldu = G * N, ldw = G * nh;
  const int64_t piece = (nh + split - 1) / split;
  parallel_items(heads * G * split, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t pr = t / split, j0 = (t % split) * piece, j1 = std::min(nh, j0 + piece);
      if (j1 <= j0) continue;
      const int64_t h = pr / G, g = pr % G;
      // dW[h, :, g, j0:j1] = x[:, h]ᵀ dU[:, g, h·nh + j0 : h·nh + j1]: the sum over the M rows in
      // chunks of kDwRows, accumulated in order (beta = 1 after the first). One GEMM over all rows
      // ran ~2x slower single-threaded than the chunks (the strided dU rows over a K of 16384).
      for (int64_t k0 = 0; k0 < M; k0 += kDwRows)
        blas::gemm_ld<T>(true, false, ih, j1 - j0, std::min(kDwRows, M - k0), x + k0 * I + h * ih, I,
                         dU + k0 * ldu + g * N + h * nh + j0, ldu, k0 == 0 ? T(0) : T(1),
                         dW + h * ih * ldw + g * nh + j0, ldw);
    }
  });
}
}  // namespace

void pararnn_projection_fwd(const at::Tensor& x_in, const at::Tensor& W_in, const at::Tensor& b, at::Tensor& U) {
  // The ATen GEMMs below write into views of the outputs, on worker threads whose grad mode is
  // their own: the inputs are detached so that no autograd rule sees them (autograd is Python's).
  const at::Tensor x = x_in.detach(), W = W_in.detach();
  const int64_t M = x.size(0);
  const int64_t heads = W.size(0), ih = W.size(1), G = W.size(2), nh = W.size(3), N = heads * nh;
  advise_huge_pages(U);
  const bool blas_dtype = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  if (blas_dtype && blas::fits_int({M, heads * ih, G * N})) {
    bool done = false;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nlseq_pararnn_projection_cpu", [&] {
      if (!blas::available<scalar_t>()) return;
      projection_fwd_blas<scalar_t>(x.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                    U.data_ptr<scalar_t>(), M, heads, ih, G, nh);
      done = true;
    });
    if (done) return;
  }
  for_each_row_block(M, [&](int64_t m0, int64_t m1) {
    const at::Tensor xr = x.slice(0, m0, m1);
    const at::Tensor ur = U.slice(0, m0, m1);
    // each U row [G, N] starts as b (contiguous, the same layout); the GEMMs accumulate onto it
    // (addmm_ in place: torch's broadcast copy of the bias into a strided block is ~5x slower)
    const size_t row_bytes = static_cast<size_t>(G * N) * b.element_size();
    char* u_bytes = static_cast<char*>(ur.data_ptr());
    for (int64_t m = 0; m < m1 - m0; ++m) std::memcpy(u_bytes + m * row_bytes, b.data_ptr(), row_bytes);
    for (int64_t h = 0; h < heads; ++h) {
      const at::Tensor xh = xr.slice(1, h * ih, (h + 1) * ih);
      for (int64_t g = 0; g < G; ++g) {
        at::Tensor out = ur.select(1, g).slice(1, h * nh, (h + 1) * nh);  // [rows, nh], row stride G·N
        out.addmm_(xh, W.select(0, h).select(1, g));
      }
    }
  });
}

void pararnn_projection_bwd(const at::Tensor& x_in, const at::Tensor& W_in, const at::Tensor& dU_in, at::Tensor* dx,
                            at::Tensor* dW) {
  const at::Tensor x = x_in.detach(), W = W_in.detach(), dU = dU_in.detach();  // as in the forward
  if (dx != nullptr) advise_huge_pages(*dx);
  const int64_t M = x.size(0);
  const int64_t heads = W.size(0), ih = W.size(1), G = W.size(2), nh = W.size(3);
  // dW: one GEMM over all M rows per (head, gate, column piece), the pieces in parallel; each is
  // one fixed sum, so the result does not depend on the thread count. Columns are split so that
  // there are at least 2 pieces per thread.
  const int64_t pairs = heads * G;
  const int64_t want = 2 * static_cast<int64_t>(at::get_num_threads());
  const int64_t split = std::max<int64_t>(1, std::min<int64_t>(nh / 16, (want + pairs - 1) / pairs));
  const int64_t piece = (nh + split - 1) / split;
  bool blas = false;
  const bool blas_dtype = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  if (blas_dtype && blas::fits_int({M, heads * ih, G * heads * nh})) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nlseq_pararnn_projection_bwd_cpu", [&] {
      if (!blas::available<scalar_t>()) return;
      blas = true;
      if (dx != nullptr)
        projection_dx_blas<scalar_t>(W.data_ptr<scalar_t>(), dU.data_ptr<scalar_t>(), dx->data_ptr<scalar_t>(), M,
                                     heads, ih, G, nh);
      if (dW != nullptr)
        projection_dw_blas<scalar_t>(x.data_ptr<scalar_t>(), dU.data_ptr<scalar_t>(), dW->data_ptr<scalar_t>(), M,
                                     heads, ih, G, nh, split);
    });
  }
  if (blas) return;
  if (dx != nullptr) {
    // dx[m, h·ih + i] = Σ_g Σ_j dU[m, g, h·nh + j] W[h, i, g, j]: per row block and head, G GEMMs
    // accumulating into the block of dx (the first one overwrites it).
    for_each_row_block(M, [&](int64_t m0, int64_t m1) {
      const at::Tensor dur = dU.slice(0, m0, m1);
      for (int64_t h = 0; h < heads; ++h) {
        at::Tensor out = dx->slice(0, m0, m1).slice(1, h * ih, (h + 1) * ih);
        for (int64_t g = 0; g < G; ++g) {
          const at::Tensor a = dur.select(1, g).slice(1, h * nh, (h + 1) * nh);  // [rows, nh]
          const at::Tensor wt = W.select(0, h).select(1, g).t();                // [nh, ih]
          if (g == 0)
            at::mm_out(out, a, wt);
          else
            out.addmm_(a, wt);
        }
      }
    });
  }
  if (dW != nullptr) {
    parallel_items(pairs * split, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t pr = t / split, j0 = (t % split) * piece, j1 = std::min(nh, j0 + piece);
        if (j1 <= j0) continue;
        const int64_t h = pr / G, g = pr % G;
        at::Tensor out = dW->select(0, h).select(1, g).slice(1, j0, j1);                // [ih, nj]
        const at::Tensor xt = x.slice(1, h * ih, (h + 1) * ih).t();                     // [ih, M]
        const at::Tensor d = dU.select(1, g).slice(1, h * nh + j0, h * nh + j1);        // [M, nj]
        at::mm_out(out, xt, d);
      }
    });
  }
}

}  // namespace cpu
}  // namespace nlseq
