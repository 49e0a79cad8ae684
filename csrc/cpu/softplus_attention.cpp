// C++ CPU kernels of softplus attention, LSSA and LSSAR (docs/spec.md §2), FlashAttention-style.
//
// The shape of softmax flash attention on the CPU: a tile of query rows meets the keys tile by
// tile; the score tile S = Q̂·K̂ᵀ and the value product P·V (and in the backward dO·Vᵀ, Pᵀ·dO,
// dSᵀ·Q̂, dS·K̂) are BLAS products on the thread's own buffers (at::mm_out on from_blob views:
// inside a parallel region they run single-threaded); between them one vectorised pass per row
// turns scores into weights (softplus_attention_rows.h: float rows run polynomial exp / log1p in
// target clones, the rare rows it leaves out and double the shared header's scalar math). Only
// [tile, D] accumulators and one or two [tile, key tile] score tiles are kept: memory O(tile·D) per thread
// beyond the outputs, never O(Tq·Tk). fp32 inputs are read in place (K̂ and Q̂ are copies only
// because the QK-norm scales their rows); bf16 / fp16 tiles are converted to float on loading.
//
// Forward: one work item per (sequence, head, query tile), handed out heaviest first (causal
// tiles differ in cost) to the threads of at::parallel_for. LSSA is one pass; LSSAR is two
// passes (row max of s and L_i, then the re-weighted terms divided by the row's largest one).
// Both keep a running row max only to shift rows whose scores all lie below −40 (qk_norm=False),
// which would otherwise underflow to an all-zero row (nlseq/softplus_attention.h, kShiftBelow);
// other rows use softplus(s) unchanged.
// Backward: one work item per (sequence, kv head). The item walks the query tiles of the G query
// heads of its group against its keys once, recomputing the scores; dk̂ and dv of its keys are
// summed in the output rows and each query tile's dq̂ in a tile buffer. No two items write the
// same row, so the threads never race, and every product is computed once (5 per tile pair, as
// softmax flash attention). LSSAR first runs a pass of its own per query tile for Γ_i.
// With fewer (sequence, kv head) pairs than threads, each pair's keys are cut into parts of about
// equal work, one per thread, and each part adds its dq̂ share into a buffer of its own.
//
// Context parallelism (python/nlseq/distributed/attention.py) runs the same loops on one block of
// a longer sequence: a signed kv_offset places the key block, n_offset >= 0 gives the global N_i
// (sa::row_length), the "partial" forward returns the unnormalised Σ_j w_ij v_j with the row sums
// (blocks merge by addition) or, for LSSAR, takes the global (L, M) of its statistics pass; the
// backward takes the global Γ_i or returns this block's share of it.
#include "softplus_attention.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "blas.h"
#include "nlseq/softplus_attention.h"
#include "softplus_attention_rows.h"

namespace nlseq {
namespace cpu {
namespace {

namespace sa = nlseq::softplus_attention;

// Tile sizes. Backward: a 128 x 256 float score tile (128 KiB) and its twin dP stay in L2; 128
// query rows amortise each K̂ tile's load over enough products, and the causal diagonal wastes at
// most one partly masked key tile per query tile. Forward: one 256 x 512 score tile (512 KiB, no
// twin); the larger products run closer to the BLAS's peak and each K̂ tile is loaded half as
// often (at D = 64 the forward took 8–20 % less time than with 128 x 256 tiles on the 2-core Xeon).
constexpr int64_t kBlockQ = 128;
constexpr int64_t kBlockK = 256;
constexpr int64_t kFwdBlockQ = 256;
constexpr int64_t kFwdBlockK = 512;

// One sequence: batch index, first query/key row and their counts.
struct Seq {
  int64_t b, q0, nq, k0, nk;
};

std::vector<Seq> sequences(int64_t B, int64_t Tq, int64_t Tk, const c10::optional<at::Tensor>& cu_q,
                           const c10::optional<at::Tensor>& cu_k) {
  std::vector<Seq> out;
  if (!cu_q.has_value()) {
    for (int64_t b = 0; b < B; ++b) out.push_back({b, 0, Tq, 0, Tk});
    return out;
  }
  const at::Tensor cq = cu_q->to(at::kLong), ck = cu_k->to(at::kLong);
  const int64_t* pq = cq.data_ptr<int64_t>();
  const int64_t* pk = ck.data_ptr<int64_t>();
  for (int64_t z = 0; z + 1 < cq.numel(); ++z) out.push_back({0, pq[z], pq[z + 1] - pq[z], pk[z], pk[z + 1] - pk[z]});
  return out;
}

// Tile of one (sequence, head): rows [start, start + len) of that sequence; cost orders the work.
struct Tile {
  int64_t seq, head, start, len, cost;
};

// Runs body(item, scratch) for every item of [0, n), handed out one at a time (an atomic counter)
// to the threads of at::parallel_for, each with its scratch from make_scratch(). The callers list
// items heaviest first, so the last ones to be taken are short: a static split of causal tiles
// (later query tiles see more keys) would leave one thread idle for up to half the time.
template <typename MakeScratch, typename Body>
void for_each_item(int64_t n, MakeScratch make_scratch, Body body) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), n);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto scratch = make_scratch();
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(i, scratch);
  });
}

// The tile products (blas.h: straight to the BLAS, no ATen call per tile).
// C [m, n] = A [m, kk] · B [n, kk]ᵀ
template <typename acc> void mm_nt(const acc* A, const acc* B, acc* C, int64_t m, int64_t n, int64_t kk) {
  blas::gemm<acc>(false, true, m, n, kk, A, B, acc(0), C);
}

// C [m, n] += A [m, kk] · B [kk, n]
template <typename acc> void mm_nn_add(const acc* A, const acc* B, acc* C, int64_t m, int64_t n, int64_t kk) {
  blas::gemm<acc>(false, false, m, n, kk, A, B, acc(1), C);
}

// C [m, n] += A [kk, m]ᵀ · B [kk, n]
template <typename acc> void mm_tn_add(const acc* A, const acc* B, acc* C, int64_t m, int64_t n, int64_t kk) {
  blas::gemm<acc>(true, false, m, n, kk, A, B, acc(1), C);
}

// dst [rows, D] = src rows (converted to acc), each multiplied by scale[row] (scale may be null).
template <typename scalar_t, typename acc>
void load_rows(const scalar_t* src, const acc* scale, int64_t rows, int64_t D, acc* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const acc f = scale ? scale[r] : acc(1);
    for (int64_t d = 0; d < D; ++d) dst[r * D + d] = static_cast<acc>(src[r * D + d]) * f;
  }
}

// src rows in the accumulation dtype: in place when they already are (fp32, fp64), else
// converted into buf.
template <typename scalar_t, typename acc>
const acc* rows_as_acc(const scalar_t* src, int64_t rows, int64_t D, acc* buf) {
  if constexpr (std::is_same<scalar_t, acc>::value) {
    return src;
  } else {
    load_rows<scalar_t, acc>(src, nullptr, rows, D, buf);
    return buf;
  }
}

template <typename scalar_t>
struct Problem {
  using acc = acc_t<scalar_t>;
  const scalar_t *q, *k, *v;
  const acc *rq, *rk;
  int64_t B, H, Hkv, Tq, Tk, D;
  bool causal;
  acc p, log_d;
  int64_t kv_offset, n_offset = -1;
  std::vector<Seq> seqs;

  // Offsets of row 0 of (sequence z, query head h) / (sequence z, kv head g).
  int64_t qrow(const Seq& s, int64_t h) const { return (s.b * H + h) * Tq + s.q0; }
  int64_t krow(const Seq& s, int64_t g) const { return (s.b * Hkv + g) * Tk + s.k0; }
  int64_t vis_of(int64_t i, const Seq& s) const { return sa::visible_count(i, s.nk, causal, kv_offset); }
  int64_t n_of(int64_t i, const Seq& s) const { return sa::row_length(i, vis_of(i, s), causal, n_offset); }

  // Query tiles of every (sequence, head), `rows` rows each, heaviest (most visible keys) first.
  std::vector<Tile> query_tiles(int64_t rows) const {
    std::vector<Tile> out;
    for (int64_t z = 0; z < static_cast<int64_t>(seqs.size()); ++z)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t s = 0; s < seqs[z].nq; s += rows) {
          const int64_t len = std::min(rows, seqs[z].nq - s);
          out.push_back({z, h, s, len, len * vis_of(s + len - 1, seqs[z])});
        }
    std::stable_sort(out.begin(), out.end(), [](const Tile& a, const Tile& b) { return a.cost > b.cost; });
    return out;
  }
};

// Zeroes s[vis, n) of a score row (keys the row does not see: weight 0, gradient 0).
template <typename acc> void zero_tail(acc* s, int64_t vis, int64_t n) { std::fill(s + vis, s + n, acc(0)); }

// partial_o (context parallelism): write the unnormalised Σ_j w_ij v_j there (not o) and the
// partial stats (Σ_j w_ij, max_j s_ij, Σ_j t_ij^p). stats_in (LSSAR): the global (L, M) rows; the
// statistics pass is skipped. LSSAR with partial_o and no stats_in runs the statistics pass only.
// Partials never shift a row (the blocks of one row must share one scale to merge by addition).
template <typename scalar_t>
void forward_impl(const Problem<scalar_t>& P, scalar_t* o, acc_t<scalar_t>* stats, acc_t<scalar_t>* partial_o = nullptr,
                  const acc_t<scalar_t>* stats_in = nullptr) {
  using acc = acc_t<scalar_t>;
  constexpr acc kInf = std::numeric_limits<acc>::infinity();
  const int64_t D = P.D, G = P.H / P.Hkv;
  const int64_t plane = P.B * P.H * P.Tq;  // stats [3, B, H, Tq]
  const bool reweight = P.p > acc(0);
  const bool partial = partial_o != nullptr, given = reweight && stats_in != nullptr;
  const int first_pass = given ? 1 : 0, last_pass = reweight && (given || !partial) ? 1 : 0;
  const int64_t bQ = kFwdBlockQ, bK = kFwdBlockK;
  const std::vector<Tile> work = P.query_tiles(bQ);
  struct Scratch {
    std::vector<acc> Qh, Kh, V, S, O, c, L, m, sh, M, R;
    std::vector<int64_t> n, nvis;
  };
  auto make_scratch = [&] {
    Scratch b;
    b.Qh.resize(bQ * D); b.Kh.resize(bK * D); b.S.resize(bQ * bK); b.O.resize(bQ * D);
    if (!std::is_same<scalar_t, acc>::value) b.V.resize(bK * D);
    for (auto* x : {&b.c, &b.L, &b.m, &b.sh, &b.M, &b.R}) x->resize(bQ);
    b.n.resize(bQ); b.nvis.resize(bQ);
    return b;
  };
  for_each_item(static_cast<int64_t>(work.size()), make_scratch, [&](int64_t it, Scratch& b) {
    const Tile& t = work[it];
    const Seq& s = P.seqs[t.seq];
    const int64_t g = t.head / G;
    const int64_t q_off = P.qrow(s, t.head) + t.start, k_off = P.krow(s, g);
    acc *S = b.S.data(), *O = b.O.data(), *c = b.c.data(), *L = b.L.data(), *m = b.m.data(), *sh = b.sh.data(),
        *M = b.M.data(), *R = b.R.data();
    int64_t *n = b.n.data(), *nvis = b.nvis.data();
    load_rows(P.q + q_off * D, P.rq + q_off, t.len, D, b.Qh.data());
    for (int64_t r = 0; r < t.len; ++r) {
      nvis[r] = P.vis_of(t.start + r, s);
      n[r] = P.n_of(t.start + r, s);
      c[r] = sa::length_scale(P.log_d, n[r]);
      L[r] = acc(0); R[r] = acc(0); sh[r] = acc(0); M[r] = acc(0);
      m[r] = -kInf;
    }
    std::fill(O, O + t.len * D, acc(0));
    const int64_t kv_end = nvis[t.len - 1];  // rows see keys [0, nvis_r); nvis grows with r
    for (int pass = first_pass; pass <= last_pass; ++pass) {
      const bool accumulate = pass == 1 || !reweight;
      if (reweight && pass == 1)
        for (int64_t r = 0; r < t.len; ++r) {
          if (given) {  // the global (L, M) of the statistics pass over every key block
            L[r] = stats_in[q_off + r];
            M[r] = stats_in[plane + q_off + r];
          } else {
            L[r] = sa::stored_sum(L[r], sh[r]);  // from here on L as stored (log form if shifted)
            M[r] = sa::lssar_base_max(m[r], L[r], n[r]);
          }
          m[r] = sa::lssar_score_floor(L[r], n[r]);  // pass 2: scores at or below give weight 0
        }
      for (int64_t k0 = 0; k0 < kv_end; k0 += bK) {
        const int64_t bk = std::min(bK, kv_end - k0);
        load_rows(P.k + (k_off + k0) * D, P.rk + k_off + k0, bk, D, b.Kh.data());
        mm_nt(b.Qh.data(), b.Kh.data(), S, t.len, bk, D);
        for (int64_t r = 0; r < t.len; ++r) {
          acc* Sr = S + r * bk;
          const int64_t vis = std::min(bk, std::max<int64_t>(nvis[r] - k0, 0));
          const acc tile_max = rows::scale_max_any(Sr, vis, c[r]);  // Sr[0, vis) = s_ij = c_i q̂_i·k̂_j
          if (pass == 0 && vis > 0) {
            // running row max (NaN-propagating) and the row's shift; when the shift moves,
            // rescale what was summed so far (online, as FlashAttention's running max)
            acc mx = m[r];
            if (mx == mx && (tile_max != tile_max || tile_max > mx)) mx = tile_max;
            const acc sh_new = partial ? acc(0) : sa::row_shift(mx);
            if (sh_new != sh[r] && m[r] > -kInf) {
              const acc f = std::exp(sh[r] - sh_new);  // <= 1: the shift only rises
              L[r] *= f;
              if (!reweight)
                for (int64_t d = 0; d < D; ++d) O[r * D + d] *= f;
            }
            m[r] = mx;
            sh[r] = sh_new;
          }
          if (!reweight || pass == 0)
            L[r] += rows::weights(Sr, vis, sh[r]);
          else
            R[r] += rows::lssar_row_terms(Sr, vis, static_cast<acc>(n[r]), L[r], sa::reweight_offset<acc>(n[r]), M[r],
                                          m[r], P.p);
          zero_tail(Sr, vis, bk);
        }
        if (accumulate)
          mm_nn_add(S, rows_as_acc(P.v + (k_off + k0) * D, bk, D, b.V.data()), O, t.len, D, bk);
      }
    }
    if (partial) {  // unnormalised sums: blocks of keys merge by addition
      std::copy(O, O + t.len * D, partial_o + q_off * D);
      for (int64_t r = 0; r < t.len; ++r) {
        const int64_t row = q_off + r;
        stats[row] = L[r];
        stats[plane + row] = given ? M[r] : m[r];
        stats[2 * plane + row] = given ? R[r] : acc(0);
      }
      return;
    }
    for (int64_t r = 0; r < t.len; ++r) {
      const acc denom = reweight ? R[r] : L[r];
      acc inv = (denom > acc(0) && (!reweight || M[r] > acc(0))) ? acc(1) / denom : acc(0);
      if (L[r] != L[r] || M[r] != M[r]) inv = L[r] + M[r];  // NaN in the row: NaN out (issue 12)
      scalar_t* orow = o + (q_off + r) * D;
      for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<scalar_t>(O[r * D + d] * inv);
      const int64_t row = q_off + r;  // = (b * H + h) * Tq + i
      stats[row] = reweight ? L[r] : sa::stored_sum(L[r], sh[r]);  // LSSAR's L is stored form already
      stats[plane + row] = reweight ? M[r] : acc(0);
      stats[2 * plane + row] = reweight ? R[r] : acc(0);
    }
  });
}

// gamma_in (LSSAR, context parallelism): the global Γ_i rows; its pass is skipped. gamma_out:
// write this block's Σ_j dbase_ij w_ij (not yet divided by L_i) there and compute nothing else
// (dqh, dkh, dv are then not written). Γ accumulates Σ_j dbase_ij a_ij with a = w / L, i.e.
// already divided by L_i.
template <typename scalar_t>
void backward_impl(const Problem<scalar_t>& P, const scalar_t* o, const scalar_t* dout, const acc_t<scalar_t>* stats,
                   acc_t<scalar_t>* dqh, acc_t<scalar_t>* dkh, acc_t<scalar_t>* dv,
                   const acc_t<scalar_t>* gamma_in = nullptr, acc_t<scalar_t>* gamma_out = nullptr) {
  using acc = acc_t<scalar_t>;
  using Row = sa::Row<acc>;
  const int64_t D = P.D, G = P.H / P.Hkv;
  const int64_t plane = P.B * P.H * P.Tq;
  const bool reweight = P.p > acc(0);
  // Work items: (sequence, kv head, key range), heaviest first. With fewer (sequence, kv head)
  // pairs than threads (B = 1 with MQA, one long sequence), each pair's keys are cut into `parts`
  // ranges of about equal work; an item then owns its keys' dk̂, dv and adds its share of dq̂
  // into a buffer of its own part (dq_parts [parts, B·H·Tq, D], summed into dqh at the end), so
  // threads still never write one row. LSSAR's Γ needs every key of a row: each part recomputes it.
  struct Item {
    int64_t seq, g, part, k0, k1;
  };
  const int64_t pairs = static_cast<int64_t>(P.seqs.size()) * P.Hkv;
  const int64_t parts =
      gamma_out || pairs == 0 ? 1 : std::max<int64_t>(1, (at::get_num_threads() + pairs - 1) / pairs);
  std::vector<Item> items;
  std::vector<int64_t> cost;
  for (int64_t z = 0; z < static_cast<int64_t>(P.seqs.size()); ++z) {
    const Seq& s = P.seqs[z];
    // cut after whole key tiles where the running work (query rows that see each tile) passes i/parts
    std::vector<int64_t> cuts{0}, tile_work;
    int64_t total = 0;
    for (int64_t k0 = 0; k0 < s.nk; k0 += kBlockK) {
      const int64_t first = P.causal ? std::min(std::max<int64_t>(k0 - P.kv_offset, 0), s.nq) : 0;
      tile_work.push_back((s.nq - first) * std::min(kBlockK, s.nk - k0) + 1);
      total += tile_work.back();
    }
    int64_t run = 0;
    for (int64_t t = 0; t < static_cast<int64_t>(tile_work.size()); ++t) {
      run += tile_work[t];
      if (static_cast<int64_t>(cuts.size()) < parts && run * parts >= total * static_cast<int64_t>(cuts.size()) &&
          (t + 1) * kBlockK < s.nk)
        cuts.push_back((t + 1) * kBlockK);
    }
    cuts.push_back(s.nk);
    while (static_cast<int64_t>(cuts.size()) < parts + 1) cuts.push_back(s.nk);  // empty parts
    for (int64_t g = 0; g < P.Hkv; ++g)
      for (int64_t c = 0; c < parts; ++c) {
        items.push_back({z, g, c, cuts[c], cuts[c + 1]});
        int64_t w = 0;
        for (int64_t t = cuts[c] / kBlockK; t * kBlockK < cuts[c + 1]; ++t) w += tile_work[t];
        cost.push_back(w + s.nq);
      }
  }
  std::vector<int64_t> order(items.size());
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  at::Tensor dq_parts;  // [parts, B·H·Tq·D] when parts > 1
  if (parts > 1)
    dq_parts = at::zeros({parts, plane * D}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value));
  struct Scratch {
    std::vector<acc> Qh, dO, Kh, V, S, dP, dQ;
    std::vector<Row> rows;
    std::vector<int64_t> vis;
  };
  auto make_scratch = [&] {
    Scratch b;
    for (auto* x : {&b.Qh, &b.dO, &b.dQ}) x->resize(kBlockQ * D);
    b.Kh.resize(kBlockK * D);
    if (!std::is_same<scalar_t, acc>::value) b.V.resize(kBlockK * D);
    b.S.resize(kBlockQ * kBlockK); b.dP.resize(kBlockQ * kBlockK);
    b.rows.resize(kBlockQ); b.vis.resize(kBlockQ);
    return b;
  };
  for_each_item(static_cast<int64_t>(items.size()), make_scratch, [&](int64_t it, Scratch& b) {
    const Item& item = items[order[it]];
    const Seq& s = P.seqs[item.seq];
    const int64_t g = item.g, kc0 = item.k0, kc1 = item.k1;
    const int64_t k_base = P.krow(s, g);
    acc* dq_out = parts > 1 ? dq_parts.data_ptr<acc>() + item.part * plane * D : dqh;
    acc *S = b.S.data(), *dP = b.dP.data(), *Qh = b.Qh.data(), *dO = b.dO.data(), *Kh = b.Kh.data(),
        *dQ = b.dQ.data();
    Row* rows = b.rows.data();
    int64_t* vis_of_row = b.vis.data();
    if (!gamma_out) {
      std::fill(dkh + (k_base + kc0) * D, dkh + (k_base + kc1) * D, acc(0));
      std::fill(dv + (k_base + kc0) * D, dv + (k_base + kc1) * D, acc(0));
    }
    const acc* Vk = nullptr;  // the current key tile's values (acc dtype)
    // S = Q̂ K̂ᵀ and dP = dO Vᵀ of query tile (bq rows) and key tile [k0, k0 + bk)
    auto tile_products = [&](int64_t bq, int64_t k0, int64_t bk) {
      load_rows(P.k + (k_base + k0) * D, P.rk + k_base + k0, bk, D, Kh);
      Vk = rows_as_acc(P.v + (k_base + k0) * D, bk, D, b.V.data());
      mm_nt(Qh, Kh, S, bq, bk, D);
      mm_nt(dO, Vk, dP, bq, bk, D);
    };
    for (int64_t h = g * G; h < (g + 1) * G; ++h) {
      for (int64_t i0 = 0; i0 < s.nq; i0 += kBlockQ) {
        const int64_t bq = std::min(kBlockQ, s.nq - i0);
        const int64_t q_off = P.qrow(s, h) + i0;
        // a part whose keys this tile's rows do not reach adds nothing to it (its dq_parts rows stay 0)
        if (parts > 1 && P.vis_of(i0 + bq - 1, s) <= kc0) continue;
        load_rows(P.q + q_off * D, P.rq + q_off, bq, D, Qh);
        load_rows<scalar_t, acc>(dout + q_off * D, nullptr, bq, D, dO);
        for (int64_t r = 0; r < bq; ++r) {
          const int64_t i = i0 + r, row = q_off + r;
          vis_of_row[r] = P.vis_of(i, s);
          const int64_t n = P.n_of(i, s);
          Row& x = rows[r];
          x.c = sa::length_scale(P.log_d, n);
          x.n = static_cast<acc>(n);
          x.offset = sa::reweight_offset<acc>(n);
          x.L = stats[row]; x.M = stats[plane + row]; x.R = stats[2 * plane + row];
          acc delta = 0;  // Δ_i = do_i·o_i
          for (int64_t d = 0; d < D; ++d) delta += dO[r * D + d] * static_cast<acc>(o[row * D + d]);
          x.delta = delta;
          x.gamma = gamma_in ? gamma_in[row] : acc(0);
        }
        const int64_t kv_end = vis_of_row[bq - 1];
        if (reweight && !gamma_in) {  // Γ_i = Σ_j dbase_ij w_ij / L_i: a pass of its own
          for (int64_t k0 = 0; k0 < kv_end; k0 += kBlockK) {
            const int64_t bk = std::min(kBlockK, kv_end - k0);
            tile_products(bq, k0, bk);
            for (int64_t r = 0; r < bq; ++r) {
              if (rows[r].L == acc(0)) continue;  // a row without keys: Γ = 0
              const int64_t vis = std::min(bk, std::max<int64_t>(vis_of_row[r] - k0, 0));
              acc* Sr = S + r * bk;
              rows::scale_max_any(Sr, vis, rows[r].c);
              rows[r].gamma += rows::gamma_row(Sr, dP + r * bk, vis, rows[r], P.p);
            }
          }
          if (gamma_out) {  // this block's Σ_j dbase_ij w_ij (partials are never shifted: L > 0 or a row without keys)
            for (int64_t r = 0; r < bq; ++r)
              gamma_out[q_off + r] = rows[r].L > acc(0) ? rows[r].gamma * rows[r].L : acc(0);
            continue;
          }
        }
        if (gamma_out) continue;
        std::fill(dQ, dQ + bq * D, acc(0));
        const int64_t k_end = std::min(kv_end, kc1);
        for (int64_t k0 = kc0; k0 < k_end; k0 += kBlockK) {
          const int64_t bk = std::min(kBlockK, k_end - k0);
          tile_products(bq, k0, bk);
          for (int64_t r = 0; r < bq; ++r) {
            const int64_t vis = std::min(bk, std::max<int64_t>(vis_of_row[r] - k0, 0));
            acc *Sr = S + r * bk, *dPr = dP + r * bk;
            rows::scale_max_any(Sr, vis, rows[r].c);
            rows::backward_row(Sr, dPr, vis, rows[r], P.p);  // Sr <- P_ij, dPr <- ds_ij·c_i
            zero_tail(Sr, vis, bk);
            zero_tail(dPr, vis, bk);
          }
          acc* dk_rows = dkh + (k_base + k0) * D;
          acc* dv_rows = dv + (k_base + k0) * D;
          mm_tn_add(S, dO, dv_rows, bk, D, bq);   // dv += Pᵀ dO
          mm_tn_add(dP, Qh, dk_rows, bk, D, bq);  // dk̂ += dSᵀ Q̂
          mm_nn_add(dP, Kh, dQ, bq, D, bk);       // dq̂ += dS K̂
        }
        std::copy(dQ, dQ + bq * D, dq_out + q_off * D);
      }
    }
  });
  if (parts > 1) {  // dq̂ = Σ over the key parts
    const acc* src = dq_parts.data_ptr<acc>();
    at::parallel_for(0, plane * D, 4096, [&](int64_t b0, int64_t e0) {
      for (int64_t x = b0; x < e0; ++x) {
        acc sum = 0;
        for (int64_t c = 0; c < parts; ++c) sum += src[c * plane * D + x];
        dqh[x] = sum;
      }
    });
  }
}

template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                               const at::Tensor& rk, bool causal, double p, int64_t kv_offset,
                               const c10::optional<at::Tensor>& cu_q, const c10::optional<at::Tensor>& cu_k,
                               int64_t n_offset = -1) {
  using acc = acc_t<scalar_t>;
  Problem<scalar_t> P;
  P.q = q.data_ptr<scalar_t>(); P.k = k.data_ptr<scalar_t>(); P.v = v.data_ptr<scalar_t>();
  P.rq = rq.data_ptr<acc>(); P.rk = rk.data_ptr<acc>();
  P.B = q.size(0); P.H = q.size(1); P.Tq = q.size(2); P.D = q.size(3);
  P.Hkv = k.size(1); P.Tk = k.size(2);
  P.causal = causal; P.p = static_cast<acc>(p); P.kv_offset = kv_offset; P.n_offset = n_offset;
  P.log_d = std::log(static_cast<acc>(P.D));
  P.seqs = sequences(P.B, P.Tq, P.Tk, cu_q, cu_k);
  return P;
}

}  // namespace

void softplus_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                            const at::Tensor& rk, bool causal, double p, int64_t kv_offset,
                            const c10::optional<at::Tensor>& cu_q, const c10::optional<at::Tensor>& cu_k,
                            at::Tensor& o, at::Tensor& stats) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "softplus_attention_fwd", [&] {
    using acc = acc_t<scalar_t>;
    const auto P = make_problem<scalar_t>(q, k, v, rq, rk, causal, p, kv_offset, cu_q, cu_k);
    forward_impl(P, o.data_ptr<scalar_t>(), stats.data_ptr<acc>());
  });
}

void softplus_attention_bwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                            const at::Tensor& rk, const at::Tensor& o, const at::Tensor& dout,
                            const at::Tensor& stats, bool causal, double p, int64_t kv_offset,
                            const c10::optional<at::Tensor>& cu_q, const c10::optional<at::Tensor>& cu_k,
                            at::Tensor& dqh, at::Tensor& dkh, at::Tensor& dv) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "softplus_attention_bwd", [&] {
    using acc = acc_t<scalar_t>;
    const auto P = make_problem<scalar_t>(q, k, v, rq, rk, causal, p, kv_offset, cu_q, cu_k);
    backward_impl(P, o.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), stats.data_ptr<acc>(), dqh.data_ptr<acc>(),
                  dkh.data_ptr<acc>(), dv.data_ptr<acc>());
  });
}

void softplus_attention_fwd_partial(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                                    const at::Tensor& rk, bool causal, double p, int64_t kv_offset, int64_t n_offset,
                                    const c10::optional<at::Tensor>& stats_in, at::Tensor& o_partial,
                                    at::Tensor& stats) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "softplus_attention_fwd_partial", [&] {
    using acc = acc_t<scalar_t>;
    const auto P = make_problem<scalar_t>(q, k, v, rq, rk, causal, p, kv_offset, c10::nullopt, c10::nullopt, n_offset);
    forward_impl(P, static_cast<scalar_t*>(nullptr), stats.data_ptr<acc>(), o_partial.data_ptr<acc>(),
                 stats_in.has_value() ? stats_in->data_ptr<acc>() : nullptr);
  });
}

void softplus_attention_bwd_partial(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                                    const at::Tensor& rk, const at::Tensor& o, const at::Tensor& dout,
                                    const at::Tensor& stats, bool causal, double p, int64_t kv_offset, int64_t n_offset,
                                    const c10::optional<at::Tensor>& gamma, at::Tensor& dqh, at::Tensor& dkh,
                                    at::Tensor& dv, at::Tensor* gamma_out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "softplus_attention_bwd_partial", [&] {
    using acc = acc_t<scalar_t>;
    const auto P = make_problem<scalar_t>(q, k, v, rq, rk, causal, p, kv_offset, c10::nullopt, c10::nullopt, n_offset);
    backward_impl(P, o.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), stats.data_ptr<acc>(), dqh.data_ptr<acc>(),
                  dkh.data_ptr<acc>(), dv.data_ptr<acc>(), gamma.has_value() ? gamma->data_ptr<acc>() : nullptr,
                  gamma_out ? gamma_out->data_ptr<acc>() : nullptr);
  });
}

}  // namespace cpu
}  // namespace nlseq
