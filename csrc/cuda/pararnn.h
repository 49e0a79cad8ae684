// Launchers of the fused ParaRNN CUDA kernels (csrc/cuda/pararnn.cu). Torch-free: raw pointers,
// a caller-provided workspace and a cudaStream_t. The algorithm is described in
// csrc/cuda/pararnn.cuh; the contract is the one of every pararnn backend (kernels/pararnn.py):
//
//   forward   U [B,T,3,N] (io), A [3,N] f32, P [2,N] f32 or null, s0 [B,S,N] (io) or null
//             -> S_all [B,T,S,N] (io), iters (int64 scalar), residual (f32 scalar)
//   backward  U, A, P, s0, S_all, dS [B,T,S,N] (io), ds_last [B,S,N] (io)
//             -> dU [B,T,3,N] (io), dA [3,N] f32, dP [2,N] f32 (zeros when P is null), ds0 [B,S,N] (io)
//
// All tensors contiguous and on the device of the stream; io is float32, bfloat16 or float16;
// every value is computed in float32. S = 1 for the GRU (h), 2 for the LSTM (c, h).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "nlseq/pararnn.h"

namespace nlseq {
namespace cuda {

enum class PararnnIo : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Sizes of one call. L is the chunk length (1..T): the kernels run C = ⌈T/L⌉ chunks of every
// sequence in parallel; pararnn_chunk_len gives the default.
struct PararnnShape {
  pararnn::CellKind cell;
  PararnnIo io;
  int64_t B, T, N, L;
};

// Grid limits of the kernels: B and the number of chunks each at most this.
constexpr int64_t kPararnnMaxGridYZ = 65535;

// Default chunk length: one chunk per sequence when B·N channels alone fill the device (num_sms
// SMs), else enough chunks to fill it, none shorter than 64 steps.
int64_t pararnn_chunk_len(int64_t B, int64_t T, int64_t N, int num_sms);

struct PararnnFwdArgs {
  const void* U;
  const float* A;
  const float* P;   // null: no peepholes (and always null for the GRU)
  const void* s0;   // null: zeros
  void* S_all;
  int64_t* iters;   // device scalar
  float* residual;  // device scalar
  int64_t max_iters;
  float tol;
};

// Bytes of device workspace pararnn_fwd needs (4-byte aligned is enough).
size_t pararnn_fwd_workspace_bytes(const PararnnShape& shape, int64_t max_iters);
cudaError_t pararnn_fwd(const PararnnShape& shape, const PararnnFwdArgs& args, void* workspace, cudaStream_t stream);

struct PararnnBwdArgs {
  const void* U;
  const float* A;
  const float* P;  // null: no peepholes
  const void* s0;  // null: zeros
  const void* S_all;
  const void* dS;
  const void* ds_last;
  void* dU;
  float* dA;
  float* dP;       // [2,N]; written with zeros when P is null; may be null then
  void* ds0;
};

size_t pararnn_bwd_workspace_bytes(const PararnnShape& shape);
cudaError_t pararnn_bwd(const PararnnShape& shape, const PararnnBwdArgs& args, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace nlseq
