// Launcher of the CUDA decoding kernel of softplus attention (csrc/cuda/softplus_attention_decode.cu),
// torch-free: raw device pointers and a stream. The caller (csrc/torch/softplus_attention_decode.cpp)
// has validated the shapes and allocated the output and a workspace of at least
// softplus_attention_decode_workspace_bytes() bytes.
//
//   q [B, H, Tq, D], k/v [B, Hkv, Tk, D], out [B, H, Tq, D], all contiguous, same dtype;
//   Tq <= kDecodeMaxQueries, D <= kDecodeMaxHeadDim, H % Hkv == 0 (query head h reads kv head
//   h / (H / Hkv)), Tk >= 1, kv_offset >= 0. reweight_p <= 0: LSSA; > 0: LSSAR with exponent p.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common.h"

namespace nlseq {
namespace cuda {

constexpr int64_t kDecodeMaxQueries = 16;
constexpr int64_t kDecodeMaxHeadDim = 256;

struct DecodeShape {
  int64_t B, H, Hkv, Tq, Tk, D;
};

size_t softplus_attention_decode_workspace_bytes(DType dtype, const DecodeShape& shape, bool causal, int64_t kv_offset);

void softplus_attention_decode(DType dtype, const DecodeShape& shape, const void* q, const void* k, const void* v,
                               bool causal, float reweight_p, int64_t kv_offset, void* out, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace nlseq
