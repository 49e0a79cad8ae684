// Input checks of the pararnn ops, shared by the CPU binding (csrc/torch/pararnn.cpp) and the
// CUDA binding (csrc/torch/pararnn_cuda.cpp), so that both reject the same inputs with the same
// messages. Every message names the op and the argument. A backend's own limits (the CUDA
// kernels' dtypes and grid size) are checked by its binding, before these.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "binding.h"
#include "nlseq/pararnn.h"

namespace nlseq {

inline pararnn::CellKind pararnn_parse_cell(const char* op, c10::string_view cell) {
  if (cell == "gru") return pararnn::CellKind::kGru;
  if (cell == "lstm") return pararnn::CellKind::kLstm;
  TORCH_CHECK(false, op, ": cell must be \"gru\" or \"lstm\", got \"", std::string(cell), "\"");
}

// The dtype of A, P, dA, dP and of every value the kernels compute: float64 for float64 U,
// float32 otherwise.
inline at::ScalarType pararnn_acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void pararnn_check_device(const char* op, const char* name, const at::Tensor& x, const at::Tensor& U) {
  TORCH_CHECK(x.device() == U.device(), op, ": ", name, " must be on the device of U (", U.device(), "), got ",
              x.device());
}

// Checks U [B, T, 3, N], A [3, N], P [2, N] (LSTM only) and s0 [B, S, N]; returns the cell.
inline pararnn::CellKind pararnn_check_inputs(const char* op, c10::string_view cell_name, const at::Tensor& U,
                                              const at::Tensor& A, const c10::optional<at::Tensor>& P,
                                              const c10::optional<at::Tensor>& s0) {
  const pararnn::CellKind cell = pararnn_parse_cell(op, cell_name);
  NLSEQ_CHECK_DIM(op, U, 4, "[B, T, 3, N]");
  const int64_t B = U.size(0), N = U.size(3);
  TORCH_CHECK(U.size(2) == 3, op, ": U must have shape [B, T, 3, N] (three gates), got ", U.sizes());
  TORCH_CHECK(at::isFloatingType(U.scalar_type()), op, ": U must be a floating tensor, got ", U.scalar_type());
  NLSEQ_CHECK_CONTIGUOUS(op, U);
  const auto acc = pararnn_acc_type(U.scalar_type());
  NLSEQ_CHECK_SHAPE(op, A, 3, N);
  TORCH_CHECK(A.scalar_type() == acc, op, ": A must have dtype ", acc, " (the accumulation dtype of U, ",
              U.scalar_type(), "), got ", A.scalar_type());
  pararnn_check_device(op, "A", A, U);
  NLSEQ_CHECK_CONTIGUOUS(op, A);
  if (cell == pararnn::CellKind::kLstm) {
    TORCH_CHECK(P.has_value(), op, ": the lstm cell needs the peepholes P [2, N]");
    NLSEQ_CHECK_SHAPE(op, (*P), 2, N);
    TORCH_CHECK(P->scalar_type() == acc, op, ": P must have dtype ", acc, " (the accumulation dtype of U, ",
                U.scalar_type(), "), got ", P->scalar_type());
    pararnn_check_device(op, "P", *P, U);
    NLSEQ_CHECK_CONTIGUOUS(op, (*P));
  } else {
    TORCH_CHECK(!P.has_value(), op, ": the gru cell has no peepholes; pass P = None");
  }
  if (s0.has_value()) {
    NLSEQ_CHECK_SHAPE(op, (*s0), B, pararnn::state_size(cell), N);
    NLSEQ_CHECK_SAME(op, (*s0), U);
    NLSEQ_CHECK_CONTIGUOUS(op, (*s0));
  }
  return cell;
}

inline void pararnn_check_max_iters(const char* op, int64_t max_iters) {
  TORCH_CHECK(max_iters >= 0, op, ": max_iters must be >= 0, got ", max_iters);
}

// The backward's extra inputs: S_all and dS [B, T, S, N], ds_last [B, S, N], all like U.
inline void pararnn_check_bwd_inputs(const char* op, pararnn::CellKind cell, const at::Tensor& U,
                                     const at::Tensor& S_all, const at::Tensor& dS, const at::Tensor& ds_last) {
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  const int S = pararnn::state_size(cell);
  NLSEQ_CHECK_SHAPE(op, S_all, B, T, S, N);
  NLSEQ_CHECK_SHAPE(op, dS, B, T, S, N);
  NLSEQ_CHECK_SHAPE(op, ds_last, B, S, N);
  NLSEQ_CHECK_SAME(op, S_all, U);
  NLSEQ_CHECK_SAME(op, dS, U);
  NLSEQ_CHECK_SAME(op, ds_last, U);
  NLSEQ_CHECK_CONTIGUOUS(op, S_all);
  NLSEQ_CHECK_CONTIGUOUS(op, dS);
  NLSEQ_CHECK_CONTIGUOUS(op, ds_last);
}

}  // namespace nlseq
