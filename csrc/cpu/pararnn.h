// C++ CPU kernels of the built-in ParaRNN cells (docs/spec.md §1.3). Inputs are validated and outputs
// allocated by the binding layer (csrc/torch/pararnn.cpp); all tensors are contiguous.
// Layouts: U [B, T, 3, N] (I/O dtype), A [3, N] and P [2, N] in the accumulation dtype (float32,
// float64 for float64 U), s0 [B, S, N] and S_all [B, T, S, N] in the I/O dtype; S = 1 (GRU: h) or
// S = 2 (LSTM: c, h).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "nlseq/pararnn.h"

namespace nlseq {
namespace cpu {

// Exact sequential forward: one pass over t per (batch row, channel), channels in parallel.
void pararnn_seq_fwd(pararnn::CellKind cell, const at::Tensor& U, const at::Tensor& A,
                     const c10::optional<at::Tensor>& P, const c10::optional<at::Tensor>& s0, at::Tensor& S_all);

// Newton forward (docs/spec.md §1.1): at most max_iters linear solves by the CPU scan, stopping as soon
// as the residual max_t |s_t − f(s_{t−1}, x_t)| <= tol. Returns (iterations, final residual).
std::pair<int64_t, double> pararnn_newton_fwd(pararnn::CellKind cell, const at::Tensor& U, const at::Tensor& A,
                                              const c10::optional<at::Tensor>& P,
                                              const c10::optional<at::Tensor>& s0, int64_t max_iters, double tol,
                                              at::Tensor& S_all);

// Fused backward (docs/spec.md §1.2) at the solution S_all: one reverse sweep per (batch row, channel)
// carrying λ, writing dU [B, T, 3, N], dA [3, N], dP [2, N] (zeros for the GRU), ds0 [B, S, N].
void pararnn_bwd(pararnn::CellKind cell, const at::Tensor& U, const at::Tensor& A, const c10::optional<at::Tensor>& P,
                 const c10::optional<at::Tensor>& s0, const at::Tensor& S_all, const at::Tensor& dS,
                 const at::Tensor& ds_last, at::Tensor& dU, at::Tensor& dA, at::Tensor& dP, at::Tensor& ds0);

// Input projection (docs/spec.md §1.3) with the block-diagonal W [heads, ih, G, nh] (all contiguous, one
// dtype): U [M, G, heads·nh] = x [M, heads·ih] W + b [G, heads·nh], GEMMs written straight into U.
void pararnn_projection_fwd(const at::Tensor& x, const at::Tensor& W, const at::Tensor& b, at::Tensor& U);

// Its backward: dx [M, heads·ih] (when dx is given) and dW [heads, ih, G, nh] (when dW is given)
// from dU [M, G, heads·nh]; db = Σ_m dU is left to the caller.
void pararnn_projection_bwd(const at::Tensor& x, const at::Tensor& W, const at::Tensor& dU, at::Tensor* dx,
                            at::Tensor* dW);

}  // namespace cpu
}  // namespace nlseq
