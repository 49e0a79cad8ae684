// C++ CPU kernels of the linear recurrence (SPEC.md §1.1–1.2).
//
// Work is split over (batch, block of kChannels channels): the block's slice of A and b at one
// time step is contiguous, so the inner loop streams memory. When there are fewer such items
// than threads, time is cut into chunks as well, in three phases:
//   1. each (item, chunk) composes its steps into one affine map per channel;
//   2. a short sequential pass over chunks turns those maps into each chunk's incoming state;
//   3. each (item, chunk) re-runs its steps from that state and writes the outputs.
// The forward and the backward share this engine: the backward is the same recurrence run the
// other way with transposed, shifted blocks (see BackwardProblem). Accumulation is float32
// (float64 for float64 inputs); the carried state never leaves the accumulation type.
#include "scan.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "nlseq/scan.h"

namespace nlseq {
namespace cpu {
namespace {

using scan::Affine;

constexpr int64_t kChannels = 64;   // channels per work item (contiguous in memory)
constexpr int64_t kMinChunk = 256;  // shortest time chunk worth a separate work item

// A problem supplies load() (step t of channel n as an affine map, for chunk composition) and
// step_block() (advance a block of channels by one step and write the outputs).

// Forward problem: step t is (A_t, b_t); the output at t is the state itself.
template <int K, typename scalar_t>
struct ForwardProblem {
  using acc = acc_t<scalar_t>;
  const scalar_t* A;  // [B, T, N, K, K]
  const scalar_t* b;  // [B, T, N, K]
  scalar_t* h;        // [B, T, N, K]
  int64_t T, N;

  void load(int64_t bi, int64_t t, int64_t n, Affine<K, acc>& s) const {
    const int64_t row = (bi * T + t) * N + n;
    const scalar_t* a = A + row * K * K;
    const scalar_t* bb = b + row * K;
    for (int i = 0; i < K; ++i) {
      s.b[i] = static_cast<acc>(bb[i]);
      for (int j = 0; j < K; ++j) s.A[i][j] = static_cast<acc>(a[i * K + j]);
    }
  }
  // One time step for channels [n0, n1): state <- A_t state + b_t, written to h_t. The flat
  // loops over contiguous memory let the compiler vectorise the diagonal case (K = 1).
  void step_block(int64_t bi, int64_t t, int64_t n0, int64_t n1, acc (*state)[K]) const {
    const int64_t row = (bi * T + t) * N;
    const scalar_t* a = A + (row + n0) * K * K;
    const scalar_t* bb = b + (row + n0) * K;
    scalar_t* out = h + (row + n0) * K;
    for (int64_t n = 0; n < n1 - n0; ++n) {
      acc y[K];
      for (int i = 0; i < K; ++i) {
        acc v = static_cast<acc>(bb[n * K + i]);
        for (int j = 0; j < K; ++j) v += static_cast<acc>(a[(n * K + i) * K + j]) * state[n][j];
        y[i] = v;
      }
      for (int i = 0; i < K; ++i) {
        state[n][i] = y[i];
        out[n * K + i] = static_cast<scalar_t>(y[i]);
      }
    }
  }
};

// Backward problem (SPEC.md §1.2), for a forward run in direction `reverse`:
//   λ_t = g_t + [t is the last step] ḡ + A_{next(t)}ᵀ λ_{next(t)},
// where next(t) is the step after t in the forward direction. It runs the other way, and
// writes db_t = λ_t and dA_t = λ_t h_{prev(t)}ᵀ with h_{prev(first)} = h0 (or 0).
template <int K, typename scalar_t>
struct BackwardProblem {
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

  void load(int64_t bi, int64_t t, int64_t n, Affine<K, acc>& s) const {
    const int64_t row = (bi * T + t) * N + n;
    const int64_t next = reverse ? t - 1 : t + 1;
    const bool last = reverse ? t == 0 : t == T - 1;
    const scalar_t* g = grad_h + row * K;
    for (int i = 0; i < K; ++i) {
      s.b[i] = static_cast<acc>(g[i]);
      if (last) s.b[i] += static_cast<acc>(grad_h_last[(bi * N + n) * K + i]);
    }
    if (last) {  // multiplies the zero initial state: any value is right; use 0
      for (int i = 0; i < K; ++i)
        for (int j = 0; j < K; ++j) s.A[i][j] = acc(0);
      return;
    }
    const scalar_t* a = A + ((bi * T + next) * N + n) * K * K;
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j) s.A[i][j] = static_cast<acc>(a[j * K + i]);  // transposed
  }
  // One backward step for channels [n0, n1): λ_t from λ_next (in `state`), then db_t and dA_t.
  // What a step reads depends on t only (the last step adds ḡ and has no A_next; the first has
  // h0 or nothing for h_prev), so each combination gets its own branch-free channel loop.
  void step_block(int64_t bi, int64_t t, int64_t n0, int64_t n1, acc (*state)[K]) const {
    const int64_t row = (bi * T + t) * N + n0;
    const bool last = reverse ? t == 0 : t == T - 1;
    const bool first = reverse ? t == T - 1 : t == 0;
    const scalar_t* g = grad_h + row * K;
    const scalar_t* gl = last ? grad_h_last + (bi * N + n0) * K : nullptr;
    const scalar_t* a = last ? nullptr : A + ((bi * T + (reverse ? t - 1 : t + 1)) * N + n0) * K * K;
    const scalar_t* hp = first ? (h0 ? h0 + (bi * N + n0) * K : nullptr)
                               : h + ((bi * T + (reverse ? t + 1 : t - 1)) * N + n0) * K;
    scalar_t* dbo = db + row * K;
    scalar_t* dAo = dA + row * K * K;
    const int64_t n = n1 - n0;
    if (last) {  // ḡ joins, there is no A_next
      if (hp != nullptr)
        step_channels<true, true>(n, g, gl, a, hp, dbo, dAo, state);
      else
        step_channels<true, false>(n, g, gl, a, hp, dbo, dAo, state);
    } else {
      if (hp != nullptr)
        step_channels<false, true>(n, g, gl, a, hp, dbo, dAo, state);
      else
        step_channels<false, false>(n, g, gl, a, hp, dbo, dAo, state);
    }
  }

  // λ = g + (LAST ? ḡ : A_nextᵀ λ_next); db = λ; dA = λ h_prevᵀ (0 without h_prev).
  template <bool LAST, bool HAS_HP>
  static void step_channels(int64_t count, const scalar_t* __restrict__ g, const scalar_t* __restrict__ gl,
                            const scalar_t* __restrict__ a, const scalar_t* __restrict__ hp,
                            scalar_t* __restrict__ dbo, scalar_t* __restrict__ dAo, acc (*__restrict__ state)[K]) {
    for (int64_t n = 0; n < count; ++n) {
      acc lam[K];
      for (int i = 0; i < K; ++i) {
        acc v = static_cast<acc>(g[n * K + i]);
        if constexpr (LAST) {
          v += static_cast<acc>(gl[n * K + i]);
        } else {
          for (int j = 0; j < K; ++j) v += static_cast<acc>(a[(n * K + j) * K + i]) * state[n][j];  // Aᵀ λ
        }
        lam[i] = v;
      }
      for (int i = 0; i < K; ++i) {
        state[n][i] = lam[i];
        dbo[n * K + i] = static_cast<scalar_t>(lam[i]);
        for (int j = 0; j < K; ++j) {
          if constexpr (HAS_HP) {
            dAo[(n * K + i) * K + j] = static_cast<scalar_t>(lam[i] * static_cast<acc>(hp[n * K + j]));
          } else {
            dAo[(n * K + i) * K + j] = scalar_t(0);
          }
        }
      }
    }
  }
};

// Runs the recurrence of `p` over t in travel order (t = T-1..0 when `backwards`), from the
// per-channel initial states `init` ([B, N, K] in acc, or nullptr for zeros), writing the
// final states into `fin` ([B, N, K] in acc).
template <int K, typename acc, typename Problem>
void run_scan(const Problem& p, int64_t B, int64_t T, int64_t N, bool backwards, const acc* init, acc* fin) {
  const int64_t nblk = (N + kChannels - 1) / kChannels;
  const int64_t items = B * nblk;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t chunks = 1;
  if (items < 2 * threads && T >= 2 * kMinChunk)
    chunks = std::min<int64_t>((2 * threads + items - 1) / items, T / kMinChunk);
  const int64_t len = (T + chunks - 1) / chunks;
  chunks = (T + len - 1) / len;

  // Steps of chunk c in travel order: i in [c*len, min(T, (c+1)*len)), t = backwards ? T-1-i : i.
  auto time_of = [&](int64_t i) { return backwards ? T - 1 - i : i; };

  // Runs chunk c of item w from states `state` ([kChannels][K]) and emits outputs.
  auto run_chunk = [&](int64_t w, int64_t c, acc (*state)[K]) {
    const int64_t bi = w / nblk, n0 = (w % nblk) * kChannels, n1 = std::min(N, n0 + kChannels);
    const int64_t i1 = std::min(T, (c + 1) * len);
    for (int64_t i = c * len; i < i1; ++i) p.step_block(bi, time_of(i), n0, n1, state);
  };
  auto load_state = [&](int64_t bi, int64_t n, acc (&dst)[K], const acc* src) {
    for (int k = 0; k < K; ++k) dst[k] = src ? src[(bi * N + n) * K + k] : acc(0);
  };

  if (chunks == 1) {
    at::parallel_for(0, items, 1, [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t bi = w / nblk, n0 = (w % nblk) * kChannels, n1 = std::min(N, n0 + kChannels);
        acc state[kChannels][K];
        for (int64_t n = n0; n < n1; ++n) load_state(bi, n, state[n - n0], init);
        run_chunk(w, 0, state);
        for (int64_t n = n0; n < n1; ++n)
          for (int k = 0; k < K; ++k) fin[(bi * N + n) * K + k] = state[n - n0][k];
      }
    });
    return;
  }

  // Phase 1: one composed affine map per (batch, chunk, channel).
  std::vector<Affine<K, acc>> agg(B * chunks * N);
  at::parallel_for(0, items * chunks, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t w = j / chunks, c = j % chunks;
      const int64_t bi = w / nblk, n0 = (w % nblk) * kChannels, n1 = std::min(N, n0 + kChannels);
      const int64_t i1 = std::min(T, (c + 1) * len);
      Affine<K, acc> s;
      for (int64_t n = n0; n < n1; ++n) agg[(bi * chunks + c) * N + n] = Affine<K, acc>::identity();
      for (int64_t i = c * len; i < i1; ++i)
        for (int64_t n = n0; n < n1; ++n) {
          p.load(bi, time_of(i), n, s);
          auto& m = agg[(bi * chunks + c) * N + n];
          m = scan::compose<K, acc>(s, m);
        }
    }
  });
  // Phase 2: incoming state of every chunk (overwrites agg[..].b; agg[..].A is no longer needed).
  at::parallel_for(0, B * N, 64, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t bi = q / N, n = q % N;
      acc carry[K];
      load_state(bi, n, carry, init);
      for (int64_t c = 0; c < chunks; ++c) {
        auto& m = agg[(bi * chunks + c) * N + n];
        acc next[K];
        scan::affine_apply<K, acc>(m.A, m.b, carry, next);
        for (int k = 0; k < K; ++k) {
          m.b[k] = carry[k];
          carry[k] = next[k];
        }
      }
      for (int k = 0; k < K; ++k) fin[q * K + k] = carry[k];
    }
  });
  // Phase 3: re-run every chunk from its incoming state.
  at::parallel_for(0, items * chunks, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t w = j / chunks, c = j % chunks;
      const int64_t bi = w / nblk, n0 = (w % nblk) * kChannels, n1 = std::min(N, n0 + kChannels);
      acc state[kChannels][K];
      for (int64_t n = n0; n < n1; ++n)
        for (int k = 0; k < K; ++k) state[n - n0][k] = agg[(bi * chunks + c) * N + n].b[k];
      run_chunk(w, c, state);
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
      ForwardProblem<KB, scalar_t> p{A.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), T, N};
      run_scan<KB, acc>(p, B, T, N, reverse, init.defined() ? init.data_ptr<acc>() : nullptr, fin.data_ptr<acc>());
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
    const auto acc_dtype = c10::CppTypeToScalarType<acc>::value;
    at::Tensor lam_first = at::empty({B, N, K}, h.options().dtype(acc_dtype));
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
      run_scan<KB, acc>(p, B, T, N, !reverse, nullptr, lam_first.data_ptr<acc>());
    });
    // dh0 = A_firstᵀ λ_first, where "first" is the forward's first step.
    at::Tensor A_first = A.select(1, reverse ? T - 1 : 0).to(acc_dtype);  // [B, N, K, K]
    dh0.copy_(at::matmul(A_first.transpose(-1, -2), lam_first.unsqueeze(-1)).squeeze(-1));
  });
}

}  // namespace cpu
}  // namespace nlseq
