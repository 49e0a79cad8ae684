// torch binding of the softplus_attention family: schemas of the nlseq_ext ops, input checks,
// output allocation, and the CPU registrations. The autograd rule lives in
// python/nlseq/ops/softplus_attention.py; the CUDA decoding op (softplus_attention_decode) is
// registered by csrc/cuda's binding when the extension is built with CUDA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "../cpu/softplus_attention.h"
#include "binding.h"

namespace nlseq {
namespace {

at::ScalarType acc_type_of(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                  const at::Tensor& rk, int64_t kv_offset, const c10::optional<at::Tensor>& cu_q,
                  const c10::optional<at::Tensor>& cu_k, bool block = false) {
  NLSEQ_CHECK_DIM(op, q, 4, "[B, H, Tq, D]");
  NLSEQ_CHECK_DIM(op, k, 4, "[B, Hkv, Tk, D]");
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2);
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, op, ": H = ", H, " must be a multiple of Hkv = ", Hkv);
  TORCH_CHECK(D > 0, op, ": the head dim must be at least 1");
  NLSEQ_CHECK_SHAPE(op, k, B, Hkv, Tk, D);
  NLSEQ_CHECK_SHAPE(op, v, B, Hkv, Tk, D);
  NLSEQ_CHECK_SHAPE(op, rq, B, H, Tq);
  NLSEQ_CHECK_SHAPE(op, rk, B, Hkv, Tk);
  NLSEQ_CHECK_SAME(op, k, q);
  NLSEQ_CHECK_SAME(op, v, q);
  TORCH_CHECK(rq.scalar_type() == acc_type_of(q) && rk.scalar_type() == acc_type_of(q), op,
              ": rq and rk must have the accumulation dtype ", acc_type_of(q));
  for (const at::Tensor* t : {&q, &k, &v, &rq, &rk}) NLSEQ_CHECK_CONTIGUOUS(op, (*t));
  // A key block of a longer sequence (context parallelism) may start after the queries.
  TORCH_CHECK(block || kv_offset >= 0, op, ": kv_offset must be >= 0, got ", kv_offset);
  TORCH_CHECK(cu_q.has_value() == cu_k.has_value(), op, ": pass both cu_seqlens or neither");
  if (cu_q.has_value()) {
    TORCH_CHECK(B == 1, op, ": with cu_seqlens, B must be 1");
    TORCH_CHECK(cu_q->dim() == 1 && cu_k->dim() == 1 && cu_q->numel() == cu_k->numel() && cu_q->numel() >= 2, op,
                ": cu_seqlens_q and cu_seqlens_k must be [S + 1] with S >= 1");
    const at::Tensor cq = cu_q->to(at::kLong), ck = cu_k->to(at::kLong);
    TORCH_CHECK(cq[0].item<int64_t>() == 0 && cq[-1].item<int64_t>() == Tq && ck[0].item<int64_t>() == 0 &&
                    ck[-1].item<int64_t>() == Tk,
                op, ": cu_seqlens must rise from 0 to the packed lengths (", Tq, ", ", Tk, ")");
    TORCH_CHECK((cq.diff() >= 0).all().item<bool>() && (ck.diff() >= 0).all().item<bool>(), op,
                ": cu_seqlens must be non-decreasing");
  }
}

std::tuple<at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& rq, const at::Tensor& rk, bool causal, double p,
                                           int64_t kv_offset, const c10::optional<at::Tensor>& cu_q,
                                           const c10::optional<at::Tensor>& cu_k) {
  check_inputs("nlseq_ext::softplus_attention_fwd", q, k, v, rq, rk, kv_offset, cu_q, cu_k);
  at::Tensor o = empty_output_like(q);
  at::Tensor stats = empty_output({3, q.size(0), q.size(1), q.size(2)}, q.options().dtype(acc_type_of(q)));
  if (q.numel() > 0) cpu::softplus_attention_fwd(q, k, v, rq, rk, causal, p, kv_offset, cu_q, cu_k, o, stats);
  return {o, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& o,
                                                       const at::Tensor& dout, const at::Tensor& stats, bool causal,
                                                       double p, int64_t kv_offset,
                                                       const c10::optional<at::Tensor>& cu_q,
                                                       const c10::optional<at::Tensor>& cu_k) {
  const char* op = "nlseq_ext::softplus_attention_bwd";
  check_inputs(op, q, k, v, rq, rk, kv_offset, cu_q, cu_k);
  NLSEQ_CHECK_SHAPE(op, o, q.size(0), q.size(1), q.size(2), q.size(3));
  NLSEQ_CHECK_SHAPE(op, dout, q.size(0), q.size(1), q.size(2), q.size(3));
  NLSEQ_CHECK_SHAPE(op, stats, 3, q.size(0), q.size(1), q.size(2));
  NLSEQ_CHECK_SAME(op, o, q);
  NLSEQ_CHECK_SAME(op, dout, q);
  TORCH_CHECK(stats.scalar_type() == acc_type_of(q), op, ": stats must have the accumulation dtype");
  for (const at::Tensor* t : {&o, &dout, &stats}) NLSEQ_CHECK_CONTIGUOUS(op, (*t));
  const auto acc = q.options().dtype(acc_type_of(q));
  at::Tensor dqh = empty_output(q.sizes(), acc), dkh = empty_output(k.sizes(), acc), dv = empty_output(v.sizes(), acc);
  if (k.numel() == 0 || q.numel() == 0) {
    dqh.zero_(); dkh.zero_(); dv.zero_();
  } else {
    cpu::softplus_attention_bwd(q, k, v, rq, rk, o, dout, stats, causal, p, kv_offset, cu_q, cu_k, dqh, dkh, dv);
  }
  return {dqh, dkh, dv};
}

// ---- context parallelism: one key block of a longer sequence (csrc/cpu/softplus_attention.h)
void check_rows(const char* op, const at::Tensor& x, const at::Tensor& q, int64_t lead, const char* what) {
  std::vector<int64_t> want{q.size(0), q.size(1), q.size(2)};
  if (lead > 0) want.insert(want.begin(), lead);
  TORCH_CHECK(x.sizes() == at::IntArrayRef(want), op, ": ", what, " must have shape ", at::IntArrayRef(want),
              ", got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == acc_type_of(q), op, ": ", what, " must have the accumulation dtype");
  TORCH_CHECK(x.device() == q.device(), op, ": ", what, " must be on the device of q");
  NLSEQ_CHECK_CONTIGUOUS(op, x);
}

std::tuple<at::Tensor, at::Tensor> fwd_partial_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const at::Tensor& rq, const at::Tensor& rk, bool causal, double p,
                                                   int64_t kv_offset, int64_t n_offset,
                                                   const c10::optional<at::Tensor>& stats_in) {
  const char* op = "nlseq_ext::softplus_attention_fwd_partial";
  check_inputs(op, q, k, v, rq, rk, kv_offset, c10::nullopt, c10::nullopt, true);
  if (stats_in.has_value()) check_rows(op, *stats_in, q, 3, "stats_in");
  const auto acc = q.options().dtype(acc_type_of(q));
  at::Tensor o = at::zeros(q.sizes(), acc);
  at::Tensor stats = at::zeros({3, q.size(0), q.size(1), q.size(2)}, acc);
  if (q.numel() > 0) cpu::softplus_attention_fwd_partial(q, k, v, rq, rk, causal, p, kv_offset, n_offset, stats_in, o, stats);
  return {o, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_partial_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq, const at::Tensor& rk,
    const at::Tensor& o, const at::Tensor& dout, const at::Tensor& stats, bool causal, double p, int64_t kv_offset,
    int64_t n_offset, const c10::optional<at::Tensor>& gamma) {
  const char* op = "nlseq_ext::softplus_attention_bwd_partial";
  check_inputs(op, q, k, v, rq, rk, kv_offset, c10::nullopt, c10::nullopt, true);
  NLSEQ_CHECK_SHAPE(op, o, q.size(0), q.size(1), q.size(2), q.size(3));
  NLSEQ_CHECK_SHAPE(op, dout, q.size(0), q.size(1), q.size(2), q.size(3));
  NLSEQ_CHECK_SAME(op, o, q);
  NLSEQ_CHECK_SAME(op, dout, q);
  for (const at::Tensor* t : {&o, &dout}) NLSEQ_CHECK_CONTIGUOUS(op, (*t));
  check_rows(op, stats, q, 3, "stats");
  if (gamma.has_value()) check_rows(op, *gamma, q, 0, "gamma");
  const auto acc = q.options().dtype(acc_type_of(q));
  at::Tensor dqh = at::zeros(q.sizes(), acc), dkh = at::zeros(k.sizes(), acc), dv = at::zeros(v.sizes(), acc);
  if (k.numel() > 0 && q.numel() > 0)
    cpu::softplus_attention_bwd_partial(q, k, v, rq, rk, o, dout, stats, causal, p, kv_offset, n_offset, gamma, dqh,
                                        dkh, dv, nullptr);
  return {dqh, dkh, dv};
}

at::Tensor bwd_gamma_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rq,
                         const at::Tensor& rk, const at::Tensor& o, const at::Tensor& dout, const at::Tensor& stats,
                         bool causal, double p, int64_t kv_offset, int64_t n_offset) {
  const char* op = "nlseq_ext::softplus_attention_bwd_gamma";
  check_inputs(op, q, k, v, rq, rk, kv_offset, c10::nullopt, c10::nullopt, true);
  NLSEQ_CHECK_SHAPE(op, o, q.size(0), q.size(1), q.size(2), q.size(3));
  NLSEQ_CHECK_SHAPE(op, dout, q.size(0), q.size(1), q.size(2), q.size(3));
  NLSEQ_CHECK_SAME(op, o, q);
  NLSEQ_CHECK_SAME(op, dout, q);
  for (const at::Tensor* t : {&o, &dout}) NLSEQ_CHECK_CONTIGUOUS(op, (*t));
  check_rows(op, stats, q, 3, "stats");
  TORCH_CHECK(p > 0, op, ": Γ exists for LSSAR only (p > 0), got p = ", p);
  const auto acc = q.options().dtype(acc_type_of(q));
  at::Tensor gamma = at::zeros({q.size(0), q.size(1), q.size(2)}, acc);
  if (k.numel() > 0 && q.numel() > 0) {
    at::Tensor unused = at::empty({0}, acc);
    cpu::softplus_attention_bwd_partial(q, k, v, rq, rk, o, dout, stats, causal, p, kv_offset, n_offset, c10::nullopt,
                                        unused, unused, unused, &gamma);
  }
  return gamma;
}

}  // namespace
}  // namespace nlseq

TORCH_LIBRARY_FRAGMENT(nlseq_ext, m) {
  m.def("softplus_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor rq, Tensor rk, bool causal, float p, "
        "int kv_offset, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k) -> (Tensor, Tensor)");
  m.def("softplus_attention_bwd(Tensor q, Tensor k, Tensor v, Tensor rq, Tensor rk, Tensor o, Tensor dout, "
        "Tensor stats, bool causal, float p, int kv_offset, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k) "
        "-> (Tensor, Tensor, Tensor)");
  // Context parallelism (python/nlseq/distributed/attention.py): one key block of a longer sequence.
  m.def("softplus_attention_fwd_partial(Tensor q, Tensor k, Tensor v, Tensor rq, Tensor rk, bool causal, float p, "
        "int kv_offset, int n_offset, Tensor? stats_in) -> (Tensor, Tensor)");
  m.def("softplus_attention_bwd_partial(Tensor q, Tensor k, Tensor v, Tensor rq, Tensor rk, Tensor o, Tensor dout, "
        "Tensor stats, bool causal, float p, int kv_offset, int n_offset, Tensor? gamma) -> (Tensor, Tensor, Tensor)");
  m.def("softplus_attention_bwd_gamma(Tensor q, Tensor k, Tensor v, Tensor rq, Tensor rk, Tensor o, Tensor dout, "
        "Tensor stats, bool causal, float p, int kv_offset, int n_offset) -> Tensor");
}

TORCH_LIBRARY_IMPL(nlseq_ext, CPU, m) {
  m.impl("softplus_attention_fwd", &nlseq::fwd_cpu);
  m.impl("softplus_attention_bwd", &nlseq::bwd_cpu);
  m.impl("softplus_attention_fwd_partial", &nlseq::fwd_partial_cpu);
  m.impl("softplus_attention_bwd_partial", &nlseq::bwd_partial_cpu);
  m.impl("softplus_attention_bwd_gamma", &nlseq::bwd_gamma_cpu);
}
