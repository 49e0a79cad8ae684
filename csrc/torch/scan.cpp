// torch binding of the scan family: schemas of the nlseq_ext ops, input checks, output
// allocation, and the CPU (and, when built with NLSEQ_WITH_CUDA, CUDA) registrations.
// The autograd rule lives in python/nlseq/ops/scan.py (torch.library.register_autograd).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cpu/scan.h"
#include "binding.h"
#include "nlseq/scan.h"

#ifdef NLSEQ_WITH_CUDA
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs the cuBLAS/cuSPARSE headers
#include <c10/cuda/CUDAGuard.h>

#include <exception>

#include "../cuda/scan.h"
#endif

namespace nlseq {
namespace {

void check_scan_inputs(const char* op, const at::Tensor& A, const at::Tensor& x, const c10::optional<at::Tensor>& h0) {
  NLSEQ_CHECK_DIM(op, x, 4, "[B, T, N, K]");
  const int64_t B = x.size(0), T = x.size(1), N = x.size(2), K = x.size(3);
  TORCH_CHECK(K >= 1 && K <= scan::kMaxBlock, op, ": block size K must be in 1..", scan::kMaxBlock, ", got ", K);
  NLSEQ_CHECK_SHAPE(op, A, B, T, N, K, K);
  NLSEQ_CHECK_SAME(op, A, x);
  NLSEQ_CHECK_CONTIGUOUS(op, A);
  NLSEQ_CHECK_CONTIGUOUS(op, x);
  if (h0.has_value()) {
    NLSEQ_CHECK_SHAPE(op, (*h0), B, N, K);
    NLSEQ_CHECK_SAME(op, (*h0), x);
    NLSEQ_CHECK_CONTIGUOUS(op, (*h0));
  }
}

template <typename Fwd>
std::tuple<at::Tensor, at::Tensor> scan_fwd_impl(const at::Tensor& A, const at::Tensor& b,
                                                 const c10::optional<at::Tensor>& h0, bool reverse, Fwd kernel) {
  check_scan_inputs("nlseq_ext::scan_fwd", A, b, h0);
  at::Tensor h = empty_output_like(b);
  at::Tensor h_last = empty_output({b.size(0), b.size(2), b.size(3)}, b.options());
  if (b.size(1) == 0) {
    h_last.copy_(h0.has_value() ? *h0 : at::zeros_like(h_last));
  } else {
    kernel(A, b, h0, reverse, h, h_last);
  }
  return {h, h_last};
}

template <typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_bwd_impl(const at::Tensor& A, const at::Tensor& h,
                                                             const c10::optional<at::Tensor>& h0,
                                                             const at::Tensor& grad_h, const at::Tensor& grad_h_last,
                                                             bool reverse, Bwd kernel) {
  const char* op = "nlseq_ext::scan_bwd";
  check_scan_inputs(op, A, h, h0);
  NLSEQ_CHECK_SHAPE(op, grad_h, h.size(0), h.size(1), h.size(2), h.size(3));
  NLSEQ_CHECK_SHAPE(op, grad_h_last, h.size(0), h.size(2), h.size(3));
  NLSEQ_CHECK_SAME(op, grad_h, h);
  NLSEQ_CHECK_SAME(op, grad_h_last, h);
  NLSEQ_CHECK_CONTIGUOUS(op, grad_h);
  NLSEQ_CHECK_CONTIGUOUS(op, grad_h_last);
  at::Tensor dA = empty_output_like(A), db = empty_output_like(h);
  at::Tensor dh0 = empty_output({h.size(0), h.size(2), h.size(3)}, h.options());
  if (h.size(1) == 0) {
    dh0.copy_(grad_h_last);
  } else {
    kernel(A, h, h0, grad_h, grad_h_last, reverse, dA, db, dh0);
  }
  return {dA, db, dh0};
}

std::tuple<at::Tensor, at::Tensor> scan_fwd_cpu(const at::Tensor& A, const at::Tensor& b,
                                                const c10::optional<at::Tensor>& h0, bool reverse) {
  return scan_fwd_impl(A, b, h0, reverse, cpu::scan_fwd);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_bwd_cpu(const at::Tensor& A, const at::Tensor& h,
                                                            const c10::optional<at::Tensor>& h0,
                                                            const at::Tensor& grad_h, const at::Tensor& grad_h_last,
                                                            bool reverse) {
  return scan_bwd_impl(A, h, h0, grad_h, grad_h_last, reverse, cpu::scan_bwd);
}

#ifdef NLSEQ_WITH_CUDA
// ------------------------------------------------------------------ CUDA (csrc/cuda/scan.cu)
cuda::DType cuda_dtype(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kHalf: return cuda::DType::kFloat16;
    default: break;
  }
  TORCH_CHECK(false, op, ": the cuda backend accepts float32, bfloat16 and float16, got ", t,
              "; float64 runs on the cpp backend (CPU tensors)");
}

cuda::ScanShape scan_shape(const at::Tensor& x) {  // x [B, T, N, K]
  return {x.size(0), x.size(1), x.size(2), static_cast<int>(x.size(3))};
}

// Scratch for the cross-segment carries (long T, small B*N); undefined when none is needed.
at::Tensor scan_workspace(size_t bytes, const at::Tensor& like) {
  return bytes == 0 ? at::Tensor() : at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

void scan_fwd_cuda_kernel(const at::Tensor& A, const at::Tensor& b, const c10::optional<at::Tensor>& h0, bool reverse,
                          at::Tensor& h, at::Tensor& h_last) {
  const char* op = "nlseq_ext::scan_fwd";
  const c10::cuda::CUDAGuard guard(b.device());
  const cuda::DType dt = cuda_dtype(op, b.scalar_type());
  const cuda::ScanShape shape = scan_shape(b);
  size_t ws_bytes = 0;
  try {
    ws_bytes = cuda::scan_fwd_workspace_bytes(dt, shape);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, op, " (cuda): ", e.what());
  }
  at::Tensor ws = scan_workspace(ws_bytes, b);
  try {
    cuda::scan_fwd(dt, shape, A.data_ptr(), b.data_ptr(), h0.has_value() ? h0->data_ptr() : nullptr, reverse,
                   h.data_ptr(), h_last.data_ptr(), ws.defined() ? ws.data_ptr() : nullptr, ws_bytes,
                   c10::cuda::getCurrentCUDAStream());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, op, " (cuda): ", e.what());
  }
}

void scan_bwd_cuda_kernel(const at::Tensor& A, const at::Tensor& h, const c10::optional<at::Tensor>& h0,
                          const at::Tensor& grad_h, const at::Tensor& grad_h_last, bool reverse, at::Tensor& dA,
                          at::Tensor& db, at::Tensor& dh0) {
  const char* op = "nlseq_ext::scan_bwd";
  const c10::cuda::CUDAGuard guard(h.device());
  const cuda::DType dt = cuda_dtype(op, h.scalar_type());
  const cuda::ScanShape shape = scan_shape(h);
  size_t ws_bytes = 0;
  try {
    ws_bytes = cuda::scan_bwd_workspace_bytes(dt, shape);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, op, " (cuda): ", e.what());
  }
  at::Tensor ws = scan_workspace(ws_bytes, h);
  try {
    cuda::scan_bwd(dt, shape, A.data_ptr(), h.data_ptr(), h0.has_value() ? h0->data_ptr() : nullptr,
                   grad_h.data_ptr(), grad_h_last.data_ptr(), reverse, dA.data_ptr(), db.data_ptr(), dh0.data_ptr(),
                   ws.defined() ? ws.data_ptr() : nullptr, ws_bytes, c10::cuda::getCurrentCUDAStream());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, op, " (cuda): ", e.what());
  }
}

std::tuple<at::Tensor, at::Tensor> scan_fwd_cuda(const at::Tensor& A, const at::Tensor& b,
                                                 const c10::optional<at::Tensor>& h0, bool reverse) {
  return scan_fwd_impl(A, b, h0, reverse, scan_fwd_cuda_kernel);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_bwd_cuda(const at::Tensor& A, const at::Tensor& h,
                                                             const c10::optional<at::Tensor>& h0,
                                                             const at::Tensor& grad_h, const at::Tensor& grad_h_last,
                                                             bool reverse) {
  return scan_bwd_impl(A, h, h0, grad_h, grad_h_last, reverse, scan_bwd_cuda_kernel);
}
#endif  // NLSEQ_WITH_CUDA

}  // namespace
}  // namespace nlseq

TORCH_LIBRARY_FRAGMENT(nlseq_ext, m) {
  m.def("scan_fwd(Tensor A, Tensor b, Tensor? h0, bool reverse) -> (Tensor, Tensor)");
  m.def("scan_bwd(Tensor A, Tensor h, Tensor? h0, Tensor grad_h, Tensor grad_h_last, bool reverse)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nlseq_ext, CPU, m) {
  m.impl("scan_fwd", &nlseq::scan_fwd_cpu);
  m.impl("scan_bwd", &nlseq::scan_bwd_cpu);
}

#ifdef NLSEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(nlseq_ext, CUDA, m) {
  m.impl("scan_fwd", &nlseq::scan_fwd_cuda);
  m.impl("scan_bwd", &nlseq::scan_bwd_cuda);
}
#endif
