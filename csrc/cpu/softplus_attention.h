// C++ CPU kernels of softplus attention (SPEC.md §2). Inputs are validated and outputs allocated
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

}  // namespace cpu
}  // namespace nlseq
