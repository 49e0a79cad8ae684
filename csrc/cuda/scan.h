// Launchers of the CUDA linear-recurrence kernels (csrc/cuda/scan.cu). Torch-free: raw device
// pointers and a stream. The caller (csrc/torch/scan.cpp) has validated shapes, dtypes and
// contiguity, allocated the outputs, and allocated `workspace` of at least
// scan_*_workspace_bytes() bytes (nullptr when that is 0) on the current device.
//
// Layout (block form, K = 1..4; the diagonal case is K = 1), all contiguous:
//   A [B, T, N, K, K], b/h/grad_h/db [B, T, N, K], h0/h_last/grad_h_last/dh0 [B, N, K], dA like A.
// h0 may be nullptr (zero initial state). T >= 1 (the binding handles T = 0).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common.h"

namespace nlseq {
namespace cuda {

struct ScanShape {
  int64_t B, T, N;
  int K;
};

// Forward: h_t = A_t h_{t-1} + b_t (t+1 when reverse), h_last = state after the last step.
size_t scan_fwd_workspace_bytes(DType dtype, const ScanShape& shape);
void scan_fwd(DType dtype, const ScanShape& shape, const void* A, const void* b, const void* h0, bool reverse,
              void* h, void* h_last, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Backward (docs/spec.md §1.2): dA, db and dh0 (dh0 = A_firstᵀ λ_first, written even when h0 is null).
size_t scan_bwd_workspace_bytes(DType dtype, const ScanShape& shape);
void scan_bwd(DType dtype, const ScanShape& shape, const void* A, const void* h, const void* h0,
              const void* grad_h, const void* grad_h_last, bool reverse, void* dA, void* db, void* dh0,
              void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace nlseq
