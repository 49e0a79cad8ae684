// C++ CPU kernels of softplus attention (docs/spec.md §2). Inputs are validated and outputs allocated
// by the binding layer (csrc/torch/softplus_attention.cpp); all tensors are contiguous.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace nlseq {
namespace cpu {

// q [B,H,Tq,D], k/v [B,Hkv,Tk,D], rq [B,H,Tq], rk [B,Hkv,Tk] (reciprocal QK norms, accumulation
// dtype), p <= 0: LSSA. Writes o [B,H,Tq,D] and stats [3,B,H,Tq] = (L, M, R).
void softplus_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                            const at::Tensor& rk, bool causal, double p, int64_t kv_offset,
                            const c10::optional<at::Tensor>& cu_q, const c10::optional<at::Tensor>& cu_k,
                            at::Tensor& o, at::Tensor& stats);

// Writes dqh [B,H,Tq,D], dkh [B,Hkv,Tk,D] (gradients w.r.t. q̂ = q·rq, k̂ = k·rk) and dv
// [B,Hkv,Tk,D], all in the accumulation dtype.
void softplus_attention_bwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                            const at::Tensor& rk, const at::Tensor& o, const at::Tensor& dout,
                            const at::Tensor& stats, bool causal, double p, int64_t kv_offset,
                            const c10::optional<at::Tensor>& cu_q, const c10::optional<at::Tensor>& cu_k,
                            at::Tensor& dqh, at::Tensor& dkh, at::Tensor& dv);

// Context parallelism (one key block of a longer sequence): kv_offset may be negative, and
// n_offset >= 0 gives the global N_i (nlseq/softplus_attention.h row_length). Writes the
// unnormalised o_partial [B,H,Tq,D] = Σ_j w_ij v_j (accumulation dtype) and stats [3,B,H,Tq]:
// LSSA (Σ_j w_ij, max_j s_ij, 0); LSSAR without stats_in: (Σ_j softplus(s_ij), max_j s_ij, 0)
// and o_partial = 0 (the statistics pass only); LSSAR with the global stats_in (L, M, ·):
// o_partial = Σ_j t_ij^p v_j and stats (L, M, Σ_j t_ij^p). Partials of key blocks merge by addition.
void softplus_attention_fwd_partial(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                                    const at::Tensor& rk, bool causal, double p, int64_t kv_offset, int64_t n_offset,
                                    const c10::optional<at::Tensor>& stats_in, at::Tensor& o_partial,
                                    at::Tensor& stats);

// The backward of one key block with the global o, stats and (LSSAR) Γ [B,H,Tq]: dqh is this
// block's share of dq̂, dkh/dv are this block's keys' gradients from these query rows. With
// gamma_out (LSSAR) it only writes this block's Σ_j dbase_ij w_ij there (Γ_i = Σ over blocks / L_i).
void softplus_attention_bwd_partial(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                                    const at::Tensor& rk, const at::Tensor& o, const at::Tensor& dout,
                                    const at::Tensor& stats, bool causal, double p, int64_t kv_offset, int64_t n_offset,
                                    const c10::optional<at::Tensor>& gamma, at::Tensor& dqh, at::Tensor& dkh,
                                    at::Tensor& dv, at::Tensor* gamma_out);

}  // namespace cpu
}  // namespace nlseq
