// C++ CPU kernels of the linear recurrence. Inputs are validated and outputs allocated by the
// binding layer (csrc/torch/scan.cpp); all tensors are contiguous, in the block layout.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace nlseq {
namespace cpu {

// h_t = A_t h_{t-1} + b_t (or t+1 when reverse); writes h [B,T,N,K] and h_last [B,N,K].
void scan_fwd(const at::Tensor& A, const at::Tensor& b, const c10::optional<at::Tensor>& h0, bool reverse,
              at::Tensor& h, at::Tensor& h_last);

// Implicit backward (docs/spec.md §1.2); writes dA [B,T,N,K,K], db [B,T,N,K], dh0 [B,N,K].
void scan_bwd(const at::Tensor& A, const at::Tensor& h, const c10::optional<at::Tensor>& h0,
              const at::Tensor& grad_h, const at::Tensor& grad_h_last, bool reverse,
              at::Tensor& dA, at::Tensor& db, at::Tensor& dh0);

}  // namespace cpu
}  // namespace nlseq
