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

// U = Wx + b (block-diagonal W over heads; python/nlseq/ops/pararnn_projection.py owns the autograd
// rule and the fallbacks). x [M, I], W [heads, I/heads, G, nh], b [G, heads·nh] -> U [M, G, heads·nh].
void pararnn_projection_check(const char* op, const at::Tensor& x, const at::Tensor& W) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, I], got ", x.sizes());
  TORCH_CHECK(W.dim() == 4, op, ": W must be 4-D [heads, I/heads, G, N/heads], got ", W.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK(W.scalar_type() == x.scalar_type(), op, ": W must have x's dtype ", x.scalar_type(), ", got ",
              W.scalar_type());
  TORCH_CHECK(x.size(1) == W.size(0) * W.size(1), op, ": x's last dim must be heads * I/heads = ",
              W.size(0) * W.size(1), " (W ", W.sizes(), "), got ", x.size(1));
  TORCH_CHECK(x.is_contiguous() && W.is_contiguous(), op, ": x and W must be contiguous");
  TORCH_CHECK(x.device() == W.device(), op, ": W must be on x's device ", x.device(), ", got ", W.device());
}

at::Tensor pararnn_projection_cpu(const at::Tensor& x, const at::Tensor& W, const at::Tensor& b) {
  const char* op = "nlseq_ext::pararnn_projection";
  pararnn_projection_check(op, x, W);
  const int64_t G = W.size(2), N = W.size(0) * W.size(3);
  TORCH_CHECK(b.dim() == 2 && b.size(0) == G && b.size(1) == N, op, ": b must have shape [G, N] = [", G, ", ", N,
              "], got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == x.scalar_type() && b.is_contiguous() && b.device() == x.device(), op,
              ": b must be a contiguous tensor of x's dtype and device");
  at::Tensor U = empty_output({x.size(0), G, N}, x.options());
  if (x.size(0) > 0 && N > 0) cpu::pararnn_projection_fwd(x, W, b, U);
  return U;
}

// -> (dx [M, I] or a 0-element tensor when not needed_dx, dW [heads, I/heads, G, nh] or 0-element)
std::tuple<at::Tensor, at::Tensor> pararnn_projection_bwd_cpu(const at::Tensor& x, const at::Tensor& W,
                                                              const at::Tensor& dU, bool need_dx, bool need_dW) {
  const char* op = "nlseq_ext::pararnn_projection_bwd";
  pararnn_projection_check(op, x, W);
  const int64_t M = x.size(0), G = W.size(2), N = W.size(0) * W.size(3);
  TORCH_CHECK(dU.dim() == 3 && dU.size(0) == M && dU.size(1) == G && dU.size(2) == N, op,
              ": dU must have shape [M, G, N] = [", M, ", ", G, ", ", N, "], got ", dU.sizes());
  TORCH_CHECK(dU.scalar_type() == x.scalar_type() && dU.is_contiguous(), op,
              ": dU must be a contiguous tensor of x's dtype");
  at::Tensor dx = need_dx ? empty_output_like(x) : at::empty({0}, x.options());
  at::Tensor dW = need_dW ? empty_output_like(W) : at::empty({0}, W.options());
  if (M == 0 || N == 0) {  // nothing to multiply: the sums are empty
    if (need_dx) dx.zero_();
    if (need_dW) dW.zero_();
  } else {
    cpu::pararnn_projection_bwd(x, W, dU, need_dx ? &dx : nullptr, need_dW ? &dW : nullptr);
  }
  return {dx, dW};
}

}  // namespace
}  // namespace nlseq

TORCH_LIBRARY_FRAGMENT(nlseq_ext, m) {
  m.def("pararnn_fwd(str cell, Tensor U, Tensor A, Tensor? P, Tensor? s0, int max_iters, float tol)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("pararnn_bwd(str cell, Tensor U, Tensor A, Tensor? P, Tensor? s0, Tensor S_all, Tensor dS, Tensor ds_last)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pararnn_seq_fwd(str cell, Tensor U, Tensor A, Tensor? P, Tensor? s0) -> Tensor");
  m.def("pararnn_projection(Tensor x, Tensor W, Tensor b) -> Tensor");
  m.def("pararnn_projection_bwd(Tensor x, Tensor W, Tensor dU, bool need_dx, bool need_dW) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nlseq_ext, CPU, m) {
  m.impl("pararnn_fwd", &nlseq::pararnn_fwd_cpu);
  m.impl("pararnn_bwd", &nlseq::pararnn_bwd_cpu);
  m.impl("pararnn_seq_fwd", &nlseq::pararnn_seq_fwd_cpu);
  m.impl("pararnn_projection", &nlseq::pararnn_projection_cpu);
  m.impl("pararnn_projection_bwd", &nlseq::pararnn_projection_bwd_cpu);
}
