// torch binding of the CUDA decoding kernel of softplus attention (csrc/cuda/softplus_attention_decode.cu):
// the schema of nlseq_ext::softplus_attention_decode, input checks, output and workspace
// allocation. Only a CUDA implementation exists (the CPU and Triton paths of softplus attention
// live with the rest of that family); the schema is defined in every build so that the op's
// name resolves and a call without the CUDA kernels fails with the dispatcher's clear message.
//
//   q [B, H, Tq, D] (Tq <= 16), k/v [B, Hkv, Tk, D], H % Hkv == 0, D <= 256, same dtype
//   (float32, bfloat16, float16) and device; causal rows see N_i = min(i + 1 + kv_offset, Tk)
//   keys; reweight_p <= 0: LSSA, > 0: LSSAR with that exponent. Returns o [B, H, Tq, D].
//   No autograd and no fake (meta) kernel here: the Python op that calls it supplies both.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "binding.h"

#ifdef NLSEQ_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs the cuBLAS/cuSPARSE headers

#include <exception>

#include "../cuda/softplus_attention_decode.h"

namespace nlseq {
namespace {

at::Tensor softplus_attention_decode_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                                          double reweight_p, int64_t kv_offset) {
  const char* op = "nlseq_ext::softplus_attention_decode";
  NLSEQ_CHECK_DIM(op, q, 4, "[B, H, Tq, D]");
  NLSEQ_CHECK_DIM(op, k, 4, "[B, Hkv, Tk, D]");
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2);
  NLSEQ_CHECK_SHAPE(op, k, B, Hkv, Tk, D);
  NLSEQ_CHECK_SHAPE(op, v, B, Hkv, Tk, D);
  NLSEQ_CHECK_SAME(op, k, q);
  NLSEQ_CHECK_SAME(op, v, q);
  TORCH_CHECK(q.is_cuda(), op, ": q must be a CUDA tensor, got ", q.device());
  TORCH_CHECK(Hkv >= 1 && H % Hkv == 0, op, ": the number of query heads (", H,
              ") must be a multiple of the number of kv heads (", Hkv, ")");
  TORCH_CHECK(Tq <= cuda::kDecodeMaxQueries, op, ": decoding takes at most ", cuda::kDecodeMaxQueries,
              " queries per head (Tq), got ", Tq, "; use the prefill path for longer query blocks");
  TORCH_CHECK(D <= cuda::kDecodeMaxHeadDim, op, ": head dim D must be <= ", cuda::kDecodeMaxHeadDim, ", got ", D);
  TORCH_CHECK(kv_offset >= 0, op, ": kv_offset (cached keys before the first query) must be >= 0, got ", kv_offset);
  cuda::DType dt = cuda::DType::kFloat32;
  switch (q.scalar_type()) {
    case at::kFloat: dt = cuda::DType::kFloat32; break;
    case at::kBFloat16: dt = cuda::DType::kBFloat16; break;
    case at::kHalf: dt = cuda::DType::kFloat16; break;
    default: TORCH_CHECK(false, op, ": q, k, v must be float32, bfloat16 or float16, got ", q.scalar_type());
  }

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = empty_output({B, H, Tq, D}, q.options());  // contiguous whatever q's strides
  if (out.numel() == 0) return out;
  if (Tk == 0) return out.zero_();  // no visible key: every row is an all-zero row
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const cuda::DecodeShape shape{B, H, Hkv, Tq, Tk, D};
  size_t ws_bytes = 0;
  try {
    ws_bytes = cuda::softplus_attention_decode_workspace_bytes(dt, shape, causal, kv_offset);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, op, " (cuda): ", e.what());
  }
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, q.options().dtype(at::kByte));
  try {
    cuda::softplus_attention_decode(dt, shape, qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), causal,
                                    static_cast<float>(reweight_p), kv_offset, out.data_ptr(), ws.data_ptr(), ws_bytes,
                                    c10::cuda::getCurrentCUDAStream());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, op, " (cuda): ", e.what());
  }
  return out;
}

}  // namespace
}  // namespace nlseq
#endif  // NLSEQ_WITH_CUDA

TORCH_LIBRARY_FRAGMENT(nlseq_ext, m) {
  m.def("softplus_attention_decode(Tensor q, Tensor k, Tensor v, bool causal, float reweight_p, int kv_offset) -> Tensor");
}

#ifdef NLSEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(nlseq_ext, CUDA, m) { m.impl("softplus_attention_decode", &nlseq::softplus_attention_decode_cuda); }
#endif
