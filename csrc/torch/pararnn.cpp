// torch binding of the pararnn family: schemas of the nlseq_ext ops, output allocation, and the
// CPU registrations. The input checks are shared with the CUDA binding (pararnn_checks.h); the
// autograd rule lives in python/nlseq/ops/pararnn.py.
//
// Launcher contract shared by every backend (cell is "gru" or "lstm"; S = 1 for the GRU, 2 for
// the LSTM; "acc" is float32, or float64 when U is float64):
//   pararnn_fwd(cell, U [B,T,3,N], A [3,N] acc, P [2,N] acc or None (LSTM only), s0 [B,S,N] or
//               None, max_iters, tol) -> (S_all [B,T,S,N], iters int64 0-dim, residual float 0-dim)
//       Newton forward (docs/spec.md §1.1); S_all, s0 in the dtype of U; residual (float64 for float64 U,
//       float32 otherwise) = max_t |s_t − f(s_{t−1}, x_t)| of the returned iterate.
//   pararnn_bwd(cell, U, A, P, s0, S_all, dS [B,T,S,N], ds_last [B,S,N])
//       -> (dU [B,T,3,N], dA [3,N] acc, dP [2,N] acc (zeros for the GRU), ds0 [B,S,N])
//       exact gradient at the solution S_all (docs/spec.md §1.2), dA and dP reduced over B and T.
//   pararnn_seq_fwd(cell, U, A, P, s0) -> S_all     exact sequential forward.
// The CPU kernels are in csrc/cpu/pararnn.cpp; the CUDA registration of the same schemas goes
// with the CUDA kernels (csrc/cuda/pararnn*.cu).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cpu/pararnn.h"
#include "binding.h"
#include "pararnn_checks.h"

namespace nlseq {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pararnn_fwd_cpu(c10::string_view cell_name, const at::Tensor& U,
                                                               const at::Tensor& A, const c10::optional<at::Tensor>& P,
                                                               const c10::optional<at::Tensor>& s0, int64_t max_iters,
                                                               double tol) {
  const char* op = "nlseq_ext::pararnn_fwd";
  const auto cell = pararnn_check_inputs(op, cell_name, U, A, P, s0);
  pararnn_check_max_iters(op, max_iters);
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  at::Tensor S_all = empty_output({B, T, pararnn::state_size(cell), N}, U.options());
  int64_t iters = 0;
  double residual = 0.0;
  if (T > 0) std::tie(iters, residual) = cpu::pararnn_newton_fwd(cell, U, A, P, s0, max_iters, tol, S_all);
  return {S_all, at::scalar_tensor(iters, U.options().dtype(at::kLong)),
          at::scalar_tensor(residual, U.options().dtype(pararnn_acc_type(U.scalar_type())))};
}

at::Tensor pararnn_seq_fwd_cpu(c10::string_view cell_name, const at::Tensor& U, const at::Tensor& A,
                               const c10::optional<at::Tensor>& P, const c10::optional<at::Tensor>& s0) {
  const char* op = "nlseq_ext::pararnn_seq_fwd";
  const auto cell = pararnn_check_inputs(op, cell_name, U, A, P, s0);
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  at::Tensor S_all = empty_output({B, T, pararnn::state_size(cell), N}, U.options());
  if (T > 0) cpu::pararnn_seq_fwd(cell, U, A, P, s0, S_all);
  return S_all;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pararnn_bwd_cpu(
    c10::string_view cell_name, const at::Tensor& U, const at::Tensor& A, const c10::optional<at::Tensor>& P,
    const c10::optional<at::Tensor>& s0, const at::Tensor& S_all, const at::Tensor& dS, const at::Tensor& ds_last) {
  const char* op = "nlseq_ext::pararnn_bwd";
  const auto cell = pararnn_check_inputs(op, cell_name, U, A, P, s0);
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  pararnn_check_bwd_inputs(op, cell, U, S_all, dS, ds_last);
  const int S = pararnn::state_size(cell);
  at::Tensor dU = empty_output_like(U);
  at::Tensor dA = empty_output({3, N}, A.options());
  at::Tensor dP = empty_output({2, N}, A.options());
  at::Tensor ds0 = empty_output({B, S, N}, U.options());
  if (T == 0) {
    dA.zero_();
    dP.zero_();
    ds0.copy_(ds_last);
  } else {
    cpu::pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last, dU, dA, dP, ds0);
  }
  return {dU, dA, dP, ds0};
}

}  // namespace
}  // namespace nlseq

TORCH_LIBRARY_FRAGMENT(nlseq_ext, m) {
  m.def("pararnn_fwd(str cell, Tensor U, Tensor A, Tensor? P, Tensor? s0, int max_iters, float tol)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("pararnn_bwd(str cell, Tensor U, Tensor A, Tensor? P, Tensor? s0, Tensor S_all, Tensor dS, Tensor ds_last)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pararnn_seq_fwd(str cell, Tensor U, Tensor A, Tensor? P, Tensor? s0) -> Tensor");
}

TORCH_LIBRARY_IMPL(nlseq_ext, CPU, m) {
  m.impl("pararnn_fwd", &nlseq::pararnn_fwd_cpu);
  m.impl("pararnn_bwd", &nlseq::pararnn_bwd_cpu);
  m.impl("pararnn_seq_fwd", &nlseq::pararnn_seq_fwd_cpu);
}
