// CUDA registrations of the pararnn ops (schemas in csrc/torch/pararnn.cpp): the fused Newton
// forward, the fused implicit backward, and the exact sequential forward (one chunk), all on the
// kernels of csrc/cuda/pararnn.cu. Also two CUDA-only ops that force the chunk length, for tests:
//   pararnn_cuda_fwd_chunked(..., int chunk_len), pararnn_cuda_bwd_chunked(..., int chunk_len)
// (chunk_len <= 0: the default choice). Inputs: float32, bfloat16 or float16 (float64 runs on the
// cpp and reference backends); A, P float32; the LSTM needs P, the GRU takes none.
#ifdef NLSEQ_WITH_CUDA
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs the cuBLAS/cuSPARSE headers
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../cuda/pararnn.h"
#include "binding.h"
#include "pararnn_checks.h"

namespace nlseq {
namespace {

cuda::PararnnIo cuda_io_type(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::PararnnIo::kFloat32;
    case at::kBFloat16: return cuda::PararnnIo::kBFloat16;
    case at::kHalf: return cuda::PararnnIo::kFloat16;
    default: break;
  }
  TORCH_CHECK(false, op, ": the CUDA kernels take float32, bfloat16 or float16 U, got ", t,
              " (float64 runs on the cpp and reference backends)");
}

// The CUDA kernels' own limits (U on the GPU, its dtype, at most kPararnnMaxGridYZ sequences),
// then the checks every backend shares (pararnn_checks.h). The dtype comes first so that float64
// U is rejected as such rather than by the dtype of A.
pararnn::CellKind cuda_check_inputs(const char* op, c10::string_view cell_name, const at::Tensor& U,
                                    const at::Tensor& A, const c10::optional<at::Tensor>& P,
                                    const c10::optional<at::Tensor>& s0) {
  TORCH_CHECK(U.is_cuda(), op, ": U must be a CUDA tensor, got ", U.device());
  cuda_io_type(op, U.scalar_type());
  const pararnn::CellKind cell = pararnn_check_inputs(op, cell_name, U, A, P, s0);
  TORCH_CHECK(U.size(0) <= cuda::kPararnnMaxGridYZ, op, ": the CUDA kernels take at most ", cuda::kPararnnMaxGridYZ,
              " sequences per call, got B = ", U.size(0));
  return cell;
}

// Number of SMs of the tensor's device (cached per device by the runtime).
int64_t sm_count(const at::Device& device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device.index()));
  return count;
}

cuda::PararnnShape make_shape(const char* op, pararnn::CellKind cell, const at::Tensor& U, int64_t chunk_len) {
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  int64_t L = chunk_len;
  if (L <= 0) L = cuda::pararnn_chunk_len(B, T, N, sm_count(U.device()));
  L = std::max<int64_t>(1, std::min(L, T));
  TORCH_CHECK((T + L - 1) / L <= cuda::kPararnnMaxGridYZ, op, ": chunk length ", L, " gives more than ",
              cuda::kPararnnMaxGridYZ, " chunks for T = ", T);
  return cuda::PararnnShape{cell, cuda_io_type(op, U.scalar_type()), B, T, N, L};
}

const void* opt_ptr(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_impl(const char* op, c10::string_view cell_name,
                                                        const at::Tensor& U, const at::Tensor& A,
                                                        const c10::optional<at::Tensor>& P,
                                                        const c10::optional<at::Tensor>& s0, int64_t max_iters,
                                                        double tol, int64_t chunk_len) {
  const auto cell = cuda_check_inputs(op, cell_name, U, A, P, s0);
  pararnn_check_max_iters(op, max_iters);
  const c10::cuda::CUDAGuard guard(U.device());
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  at::Tensor S_all = empty_output({B, T, pararnn::state_size(cell), N}, U.options());
  at::Tensor iters = at::zeros({}, U.options().dtype(at::kLong));
  at::Tensor residual = at::zeros({}, U.options().dtype(at::kFloat));
  if (B == 0 || T == 0 || N == 0) return {S_all, iters, residual};
  const cuda::PararnnShape shape = make_shape(op, cell, U, chunk_len);
  at::Tensor ws = at::empty({int64_t(cuda::pararnn_fwd_workspace_bytes(shape, max_iters))},
                            U.options().dtype(at::kByte));
  cuda::PararnnFwdArgs args{U.data_ptr(),
                            A.data_ptr<float>(),
                            P.has_value() ? P->data_ptr<float>() : nullptr,
                            opt_ptr(s0),
                            S_all.data_ptr(),
                            iters.data_ptr<int64_t>(),
                            residual.data_ptr<float>(),
                            max_iters,
                            static_cast<float>(tol)};
  const cudaError_t err = cuda::pararnn_fwd(shape, args, ws.data_ptr(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
  return {S_all, iters, residual};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_impl(
    const char* op, c10::string_view cell_name, const at::Tensor& U, const at::Tensor& A,
    const c10::optional<at::Tensor>& P, const c10::optional<at::Tensor>& s0, const at::Tensor& S_all,
    const at::Tensor& dS, const at::Tensor& ds_last, int64_t chunk_len) {
  const auto cell = cuda_check_inputs(op, cell_name, U, A, P, s0);
  const c10::cuda::CUDAGuard guard(U.device());
  const int64_t B = U.size(0), T = U.size(1), N = U.size(3);
  pararnn_check_bwd_inputs(op, cell, U, S_all, dS, ds_last);
  const int S = pararnn::state_size(cell);
  at::Tensor dU = empty_output_like(U);
  at::Tensor dA = empty_output({3, N}, A.options());
  at::Tensor dP = empty_output({2, N}, A.options());
  at::Tensor ds0 = empty_output({B, S, N}, U.options());
  if (B == 0 || T == 0 || N == 0) {
    dA.zero_();
    dP.zero_();
    ds0.copy_(ds_last);
    return {dU, dA, dP, ds0};
  }
  const cuda::PararnnShape shape = make_shape(op, cell, U, chunk_len);
  at::Tensor ws = at::empty({int64_t(cuda::pararnn_bwd_workspace_bytes(shape))}, U.options().dtype(at::kByte));
  cuda::PararnnBwdArgs args{U.data_ptr(),
                            A.data_ptr<float>(),
                            P.has_value() ? P->data_ptr<float>() : nullptr,
                            opt_ptr(s0),
                            S_all.data_ptr(),
                            dS.data_ptr(),
                            ds_last.data_ptr(),
                            dU.data_ptr(),
                            dA.data_ptr<float>(),
                            dP.data_ptr<float>(),
                            ds0.data_ptr()};
  const cudaError_t err = cuda::pararnn_bwd(shape, args, ws.data_ptr(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
  return {dU, dA, dP, ds0};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pararnn_fwd_cuda(c10::string_view cell, const at::Tensor& U,
                                                                const at::Tensor& A,
                                                                const c10::optional<at::Tensor>& P,
                                                                const c10::optional<at::Tensor>& s0,
                                                                int64_t max_iters, double tol) {
  return fwd_impl("nlseq_ext::pararnn_fwd", cell, U, A, P, s0, max_iters, tol, 0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pararnn_bwd_cuda(
    c10::string_view cell, const at::Tensor& U, const at::Tensor& A, const c10::optional<at::Tensor>& P,
    const c10::optional<at::Tensor>& s0, const at::Tensor& S_all, const at::Tensor& dS, const at::Tensor& ds_last) {
  return bwd_impl("nlseq_ext::pararnn_bwd", cell, U, A, P, s0, S_all, dS, ds_last, 0);
}

// Exact sequential forward: one chunk per sequence, which the sweep runs exactly (no update).
at::Tensor pararnn_seq_fwd_cuda(c10::string_view cell, const at::Tensor& U, const at::Tensor& A,
                                const c10::optional<at::Tensor>& P, const c10::optional<at::Tensor>& s0) {
  return std::get<0>(fwd_impl("nlseq_ext::pararnn_seq_fwd", cell, U, A, P, s0, 0, 0.0, U.size(1)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pararnn_cuda_fwd_chunked(
    c10::string_view cell, const at::Tensor& U, const at::Tensor& A, const c10::optional<at::Tensor>& P,
    const c10::optional<at::Tensor>& s0, int64_t max_iters, double tol, int64_t chunk_len) {
  return fwd_impl("nlseq_ext::pararnn_cuda_fwd_chunked", cell, U, A, P, s0, max_iters, tol, chunk_len);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pararnn_cuda_bwd_chunked(
    c10::string_view cell, const at::Tensor& U, const at::Tensor& A, const c10::optional<at::Tensor>& P,
    const c10::optional<at::Tensor>& s0, const at::Tensor& S_all, const at::Tensor& dS, const at::Tensor& ds_last,
    int64_t chunk_len) {
  return bwd_impl("nlseq_ext::pararnn_cuda_bwd_chunked", cell, U, A, P, s0, S_all, dS, ds_last, chunk_len);
}

}  // namespace
}  // namespace nlseq

TORCH_LIBRARY_FRAGMENT(nlseq_ext, m) {
  m.def("pararnn_cuda_fwd_chunked(str cell, Tensor U, Tensor A, Tensor? P, Tensor? s0, int max_iters, float tol,"
        " int chunk_len) -> (Tensor, Tensor, Tensor)");
  m.def("pararnn_cuda_bwd_chunked(str cell, Tensor U, Tensor A, Tensor? P, Tensor? s0, Tensor S_all, Tensor dS,"
        " Tensor ds_last, int chunk_len) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nlseq_ext, CUDA, m) {
  m.impl("pararnn_fwd", &nlseq::pararnn_fwd_cuda);
  m.impl("pararnn_bwd", &nlseq::pararnn_bwd_cuda);
  m.impl("pararnn_seq_fwd", &nlseq::pararnn_seq_fwd_cuda);
  m.impl("pararnn_cuda_fwd_chunked", &nlseq::pararnn_cuda_fwd_chunked);
  m.impl("pararnn_cuda_bwd_chunked", &nlseq::pararnn_cuda_bwd_chunked);
}

#endif  // NLSEQ_WITH_CUDA
