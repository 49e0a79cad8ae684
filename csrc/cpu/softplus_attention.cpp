// C++ CPU kernels of softplus attention, LSSA and LSSAR (docs/spec.md §2), FlashAttention-style.
//
// Work is split into tiles of kBlockQ query rows (forward, dq) or kBlockK keys (dk, dv), spread
// over threads with at::parallel_for. Each tile streams the other side in tiles and keeps only
// [kBlockQ, kBlockK] scores and [tile, D] accumulators: memory O(tile·D) per thread, never
// O(Tq·Tk). Tile products are matrix multiplications (at::mm_out on the thread's buffers; inside
// a parallel region they run single-threaded); the elementwise math is the shared header.
//
// Forward: LSSA is one pass; LSSAR is two passes (row max of s and L_i, then the re-weighted
// terms divided by the row's largest one). Both keep a running row max only to shift rows whose
// scores all lie below −40 (qk_norm=False), which would otherwise underflow to an all-zero row
// (nlseq/softplus_attention.h, kShiftBelow); other rows use softplus(s) unchanged.
// Backward: phase A, per query tile: (LSSAR) Γ_i in a pass of its own, then dq̂; phase B, per key
// tile and for every query head of its group: dk̂ and dv. Both recompute the scores.
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
#include <cmath>
#include <limits>
#include <vector>

#include "nlseq/softplus_attention.h"

namespace nlseq {
namespace cpu {
namespace {

namespace sa = nlseq::softplus_attention;

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 256;

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

// Tile of one (sequence, head): rows [start, start + len) of that sequence.
struct Tile {
  int64_t seq, head, start, len;
};

std::vector<Tile> tiles(const std::vector<Seq>& seqs, int64_t heads, bool over_keys, int64_t block) {
  std::vector<Tile> out;
  for (int64_t z = 0; z < static_cast<int64_t>(seqs.size()); ++z) {
    const int64_t n = over_keys ? seqs[z].nk : seqs[z].nq;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t s = 0; s < n; s += block) out.push_back({z, h, s, std::min(block, n - s)});
  }
  return out;
}

// C [m, n] (+)= A [m, kk] · B [n, kk]ᵀ   (row-major, leading dims kk)
template <typename acc> void mm_nt(const acc* A, const acc* B, acc* C, int64_t m, int64_t n, int64_t kk, bool add) {
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value);
  at::Tensor a = at::from_blob(const_cast<acc*>(A), {m, kk}, opt);
  at::Tensor b = at::from_blob(const_cast<acc*>(B), {n, kk}, opt);
  at::Tensor c = at::from_blob(C, {m, n}, opt);
  if (add) c.addmm_(a, b.t()); else at::mm_out(c, a, b.t());
}

// C [m, n] += A [m, kk] · B [kk, n]
template <typename acc> void mm_nn_add(const acc* A, const acc* B, acc* C, int64_t m, int64_t n, int64_t kk) {
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value);
  at::Tensor a = at::from_blob(const_cast<acc*>(A), {m, kk}, opt);
  at::Tensor b = at::from_blob(const_cast<acc*>(B), {kk, n}, opt);
  at::from_blob(C, {m, n}, opt).addmm_(a, b);
}

// C [m, n] += A [kk, m]ᵀ · B [kk, n]
template <typename acc> void mm_tn_add(const acc* A, const acc* B, acc* C, int64_t m, int64_t n, int64_t kk) {
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value);
  at::Tensor a = at::from_blob(const_cast<acc*>(A), {kk, m}, opt);
  at::Tensor b = at::from_blob(const_cast<acc*>(B), {kk, n}, opt);
  at::from_blob(C, {m, n}, opt).addmm_(a.t(), b);
}

// dst [rows, D] = src rows (converted to acc), each multiplied by scale[row] (scale may be null).
template <typename scalar_t, typename acc>
void load_rows(const scalar_t* src, const acc* scale, int64_t rows, int64_t D, acc* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const acc f = scale ? scale[r] : acc(1);
    for (int64_t d = 0; d < D; ++d) dst[r * D + d] = static_cast<acc>(src[r * D + d]) * f;
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
};

// partial_o (context parallelism): write the unnormalised Σ_j w_ij v_j there (not o) and the
// partial stats (Σ_j w_ij, max_j s_ij, Σ_j t_ij^p). stats_in (LSSAR): the global (L, M) rows; the
// statistics pass is skipped. LSSAR with partial_o and no stats_in runs the statistics pass only.
// Partials never shift a row (the blocks of one row must share one scale to merge by addition).
template <typename scalar_t>
void forward_impl(const Problem<scalar_t>& P, scalar_t* o, acc_t<scalar_t>* stats, acc_t<scalar_t>* partial_o = nullptr,
                  const acc_t<scalar_t>* stats_in = nullptr) {
  using acc = acc_t<scalar_t>;
  const int64_t D = P.D, G = P.H / P.Hkv;
  const int64_t plane = P.B * P.H * P.Tq;  // stats [3, B, H, Tq]
  const bool reweight = P.p > acc(0);
  const bool partial = partial_o != nullptr, given = reweight && stats_in != nullptr;
  const int first_pass = given ? 1 : 0, last_pass = reweight && (given || !partial) ? 1 : 0;
  const std::vector<Tile> work = tiles(P.seqs, P.H, false, kBlockQ);
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> Qh(kBlockQ * D), Kh(kBlockK * D), V(kBlockK * D), S(kBlockQ * kBlockK), O(kBlockQ * D);
    std::vector<acc> c(kBlockQ), L(kBlockQ), m(kBlockQ), sh(kBlockQ), M(kBlockQ), R(kBlockQ);
    std::vector<int64_t> n(kBlockQ), nvis(kBlockQ);
    for (int64_t it = begin; it < end; ++it) {
      const Tile& t = work[it];
      const Seq& s = P.seqs[t.seq];
      const int64_t g = t.head / G;
      const int64_t q_off = P.qrow(s, t.head) + t.start, k_off = P.krow(s, g);
      load_rows(P.q + q_off * D, P.rq + q_off, t.len, D, Qh.data());
      for (int64_t r = 0; r < t.len; ++r) {
        nvis[r] = P.vis_of(t.start + r, s);
        n[r] = P.n_of(t.start + r, s);
        c[r] = sa::length_scale(P.log_d, n[r]);
        L[r] = acc(0); R[r] = acc(0); sh[r] = acc(0);
        m[r] = -std::numeric_limits<acc>::infinity();
      }
      std::fill(O.begin(), O.end(), acc(0));
      const int64_t kv_end = nvis[t.len - 1];  // rows see keys [0, nvis_r); nvis grows with r
      // scores of key tile [k0, k0 + bk) into S [len, bk]
      auto scores = [&](int64_t k0, int64_t bk) {
        load_rows(P.k + (k_off + k0) * D, P.rk + k_off + k0, bk, D, Kh.data());
        mm_nt(Qh.data(), Kh.data(), S.data(), t.len, bk, D, false);
      };
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
        for (int64_t k0 = 0; k0 < kv_end; k0 += kBlockK) {
          const int64_t bk = std::min(kBlockK, kv_end - k0);
          scores(k0, bk);
          for (int64_t r = 0; r < t.len; ++r) {
            acc* Sr = S.data() + r * bk;
            const int64_t vis = std::min(bk, std::max<int64_t>(nvis[r] - k0, 0));
            const acc nr = static_cast<acc>(n[r]), off = sa::reweight_offset<acc>(n[r]);
            if (pass == 0 && vis > 0) {
              // running row max (NaN-propagating) and the row's shift; when the shift moves,
              // rescale what was summed so far (online, as FlashAttention's running max)
              acc mx = m[r];
              for (int64_t j = 0; j < vis; ++j) {
                const acc sc = c[r] * Sr[j];
                if ((sc > mx || sc != sc) && mx == mx) mx = sc;
              }
              const acc sh_new = partial ? acc(0) : sa::row_shift(mx);
              if (sh_new != sh[r] && m[r] > -std::numeric_limits<acc>::infinity()) {
                const acc f = std::exp(sh[r] - sh_new);  // <= 1: the shift only rises
                L[r] *= f;
                if (!reweight)
                  for (int64_t d = 0; d < D; ++d) O[r * D + d] *= f;
              }
              m[r] = mx;
              sh[r] = sh_new;
            }
            for (int64_t j = 0; j < bk; ++j) {
              if (j >= vis) { Sr[j] = acc(0); continue; }
              const acc sc = c[r] * Sr[j];
              if (!reweight || pass == 0) {
                const acc w = sa::shifted_weight(sc, sh[r]);
                L[r] += w;
                Sr[j] = w;
              } else if (sc <= m[r] || !(M[r] > acc(0))) {
                Sr[j] = acc(0);  // base <= 0 (or an all-zero row): no softplus, no power
              } else {
                const acc base = nr * sa::weight_over_sum(sc, L[r]) - off;
                const acc wt = M[r] > acc(0) && base > acc(0) ? sa::pow_ratio(base / M[r], P.p) : acc(0);
                R[r] += wt;
                Sr[j] = wt;
              }
            }
          }
          if (accumulate) {
            load_rows<scalar_t, acc>(P.v + (k_off + k0) * D, nullptr, bk, D, V.data());
            mm_nn_add(S.data(), V.data(), O.data(), t.len, D, bk);
          }
        }
      }
      if (partial) {  // unnormalised sums: blocks of keys merge by addition
        std::copy(O.begin(), O.begin() + t.len * D, partial_o + q_off * D);
        for (int64_t r = 0; r < t.len; ++r) {
          const int64_t row = q_off + r;
          stats[row] = L[r];
          stats[plane + row] = given ? M[r] : m[r];
          stats[2 * plane + row] = given ? R[r] : acc(0);
        }
        continue;
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
    }
  });
}

// gamma_in (LSSAR, context parallelism): the global Γ_i rows; its pass is skipped. gamma_out:
// write this block's Σ_j dbase_ij w_ij (not yet divided by L_i) there and compute nothing else.
// (Γ accumulates Σ_j dbase_ij a_ij with a = w / L, i.e. already divided by L_i.)
template <typename scalar_t>
void backward_impl(const Problem<scalar_t>& P, const scalar_t* o, const scalar_t* dout, const acc_t<scalar_t>* stats,
                   acc_t<scalar_t>* dqh, acc_t<scalar_t>* dkh, acc_t<scalar_t>* dv,
                   const acc_t<scalar_t>* gamma_in = nullptr, acc_t<scalar_t>* gamma_out = nullptr) {
  using acc = acc_t<scalar_t>;
  using Row = sa::Row<acc>;
  const int64_t D = P.D, G = P.H / P.Hkv;
  const int64_t plane = P.B * P.H * P.Tq;
  const bool reweight = P.p > acc(0);
  // Δ_i = do_i·o_i and Γ_i (LSSAR) for every query row: O(B·H·Tq) memory.
  std::vector<acc> delta(plane), gamma(plane, acc(0));
  at::parallel_for(0, plane, 256, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      acc sum = 0;
      for (int64_t d = 0; d < D; ++d) sum += static_cast<acc>(dout[row * D + d]) * static_cast<acc>(o[row * D + d]);
      delta[row] = sum;
    }
  });
  auto row_of = [&](const Seq& s, int64_t i, int64_t row) {
    Row r;
    const int64_t n = P.n_of(i, s);
    r.c = sa::length_scale(P.log_d, n);
    r.n = static_cast<acc>(n);
    r.offset = sa::reweight_offset<acc>(n);
    r.L = stats[row]; r.M = stats[plane + row]; r.R = stats[2 * plane + row];
    r.delta = delta[row]; r.gamma = gamma[row];
    return r;
  };

  // Phase A: per query tile, Γ (LSSAR) then dq̂.
  const std::vector<Tile> qwork = tiles(P.seqs, P.H, false, kBlockQ);
  at::parallel_for(0, static_cast<int64_t>(qwork.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> Qh(kBlockQ * D), dO(kBlockQ * D), Kh(kBlockK * D), V(kBlockK * D), S(kBlockQ * kBlockK),
        dP(kBlockQ * kBlockK), dQ(kBlockQ * D);
    std::vector<Row> rows(kBlockQ);
    std::vector<int64_t> n(kBlockQ);  // keys visible to each row
    for (int64_t it = begin; it < end; ++it) {
      const Tile& t = qwork[it];
      const Seq& s = P.seqs[t.seq];
      const int64_t q_off = P.qrow(s, t.head) + t.start, k_off = P.krow(s, t.head / G);
      load_rows(P.q + q_off * D, P.rq + q_off, t.len, D, Qh.data());
      load_rows<scalar_t, acc>(dout + q_off * D, nullptr, t.len, D, dO.data());
      for (int64_t r = 0; r < t.len; ++r) { n[r] = P.vis_of(t.start + r, s); rows[r] = row_of(s, t.start + r, q_off + r); }
      std::fill(dQ.begin(), dQ.end(), acc(0));
      const int64_t kv_end = n[t.len - 1];
      auto tile_products = [&](int64_t k0, int64_t bk) {
        load_rows(P.k + (k_off + k0) * D, P.rk + k_off + k0, bk, D, Kh.data());
        load_rows<scalar_t, acc>(P.v + (k_off + k0) * D, nullptr, bk, D, V.data());
        mm_nt(Qh.data(), Kh.data(), S.data(), t.len, bk, D, false);
        mm_nt(dO.data(), V.data(), dP.data(), t.len, bk, D, false);
      };
      if (reweight && gamma_in) {
        for (int64_t r = 0; r < t.len; ++r) rows[r].gamma = gamma[q_off + r] = gamma_in[q_off + r];
      } else if (reweight) {  // Γ_i = Σ_j dbase_ij w_ij / L_i
        for (int64_t k0 = 0; k0 < kv_end; k0 += kBlockK) {
          const int64_t bk = std::min(kBlockK, kv_end - k0);
          tile_products(k0, bk);
          for (int64_t r = 0; r < t.len; ++r) {
            const int64_t vis = std::min(bk, std::max<int64_t>(n[r] - k0, 0));
            acc sum = 0;
            if (rows[r].L == acc(0)) continue;  // a row without keys: Γ = 0
            for (int64_t j = 0; j < vis; ++j) {
              const acc a = sa::weight_over_sum(rows[r].c * S[r * bk + j], rows[r].L);  // w / L
              sum += sa::lssar_dbase(rows[r], a, dP[r * bk + j], P.p) * a;
            }
            rows[r].gamma += sum;
          }
        }
        if (gamma_out) {  // this block's Σ_j dbase_ij w_ij (partials are never shifted: L > 0 or a row without keys)
          for (int64_t r = 0; r < t.len; ++r)
            gamma_out[q_off + r] = rows[r].L > acc(0) ? rows[r].gamma * rows[r].L : acc(0);
          continue;
        }
        for (int64_t r = 0; r < t.len; ++r) gamma[q_off + r] = rows[r].gamma;
      }
      for (int64_t k0 = 0; k0 < kv_end; k0 += kBlockK) {
        const int64_t bk = std::min(kBlockK, kv_end - k0);
        tile_products(k0, bk);
        for (int64_t r = 0; r < t.len; ++r) {
          const int64_t vis = std::min(bk, std::max<int64_t>(n[r] - k0, 0));
          for (int64_t j = 0; j < bk; ++j) {
            acc Pij = 0, ds = 0;
            if (j < vis) sa::score_backward(rows[r], rows[r].c * S[r * bk + j], dP[r * bk + j], P.p, Pij, ds);
            S[r * bk + j] = ds;  // ds_ij·c_i
          }
        }
        mm_nn_add(S.data(), Kh.data(), dQ.data(), t.len, D, bk);
      }
      std::copy(dQ.begin(), dQ.begin() + t.len * D, dqh + q_off * D);
    }
  });

  if (gamma_out) return;
  // Phase B: per key tile, dk̂ and dv summed over the query heads of its group.
  const std::vector<Tile> kwork = tiles(P.seqs, P.Hkv, true, kBlockK);
  at::parallel_for(0, static_cast<int64_t>(kwork.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> Qh(kBlockQ * D), dO(kBlockQ * D), Kh(kBlockK * D), V(kBlockK * D), S(kBlockQ * kBlockK),
        dP(kBlockQ * kBlockK), dK(kBlockK * D), dV(kBlockK * D);
    for (int64_t it = begin; it < end; ++it) {
      const Tile& t = kwork[it];
      const Seq& s = P.seqs[t.seq];
      const int64_t k_off = P.krow(s, t.head) + t.start;
      load_rows(P.k + k_off * D, P.rk + k_off, t.len, D, Kh.data());
      load_rows<scalar_t, acc>(P.v + k_off * D, nullptr, t.len, D, V.data());
      std::fill(dK.begin(), dK.end(), acc(0));
      std::fill(dV.begin(), dV.end(), acc(0));
      // first query row that sees key t.start: i + kv_offset >= t.start
      const int64_t i_first = P.causal ? std::max<int64_t>(t.start - P.kv_offset, 0) : 0;
      for (int64_t h = t.head * G; h < (t.head + 1) * G; ++h) {
        for (int64_t i0 = i_first; i0 < s.nq; i0 += kBlockQ) {
          const int64_t bq = std::min(kBlockQ, s.nq - i0);
          const int64_t q_off = P.qrow(s, h) + i0;
          load_rows(P.q + q_off * D, P.rq + q_off, bq, D, Qh.data());
          load_rows<scalar_t, acc>(dout + q_off * D, nullptr, bq, D, dO.data());
          mm_nt(Qh.data(), Kh.data(), S.data(), bq, t.len, D, false);
          mm_nt(dO.data(), V.data(), dP.data(), bq, t.len, D, false);
          for (int64_t r = 0; r < bq; ++r) {
            const Row row = row_of(s, i0 + r, q_off + r);
            const int64_t vis = std::min(t.len, std::max<int64_t>(P.vis_of(i0 + r, s) - t.start, 0));
            for (int64_t j = 0; j < t.len; ++j) {
              acc Pij = 0, ds = 0;
              if (j < vis) sa::score_backward(row, row.c * S[r * t.len + j], dP[r * t.len + j], P.p, Pij, ds);
              S[r * t.len + j] = Pij;
              dP[r * t.len + j] = ds;
            }
          }
          mm_tn_add(S.data(), dO.data(), dV.data(), t.len, D, bq);   // dv += Pᵀ dO
          mm_tn_add(dP.data(), Qh.data(), dK.data(), t.len, D, bq);  // dk̂ += dSᵀ Q̂
        }
      }
      std::copy(dK.begin(), dK.begin() + t.len * D, dkh + k_off * D);
      std::copy(dV.begin(), dV.begin() + t.len * D, dv + k_off * D);
    }
  });
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
