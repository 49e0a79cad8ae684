// Launchers of the fused ParaRNN CUDA kernels (csrc/cuda/pararnn.cuh): workspace layout, chunking,
// the Newton iteration sequence, and the cell × I/O-dtype instantiations. Torch-free.
#include <algorithm>

#include "pararnn.cuh"
#include "pararnn.h"

// Runtime I/O dtype -> storage type T; runtime cell -> CELL type (nlseq/pararnn.h).
#define NLSEQ_PARARNN_IO_SWITCH(io, T, ...)                      \
  [&]() -> cudaError_t {                                         \
    switch (io) {                                                \
      case PararnnIo::kFloat32: {                                   \
        using T = float;                                         \
        return __VA_ARGS__();                                    \
      }                                                          \
      case PararnnIo::kBFloat16: {                                  \
        using T = __nv_bfloat16;                                 \
        return __VA_ARGS__();                                    \
      }                                                          \
      case PararnnIo::kFloat16: {                                   \
        using T = __half;                                        \
        return __VA_ARGS__();                                    \
      }                                                          \
    }                                                            \
    return cudaErrorInvalidValue;                                \
  }()

#define NLSEQ_PARARNN_CELL_SWITCH(cell, CELL, ...)               \
  [&]() -> cudaError_t {                                         \
    if ((cell) == pararnn::CellKind::kGru) {                     \
      using CELL = pararnn::Gru<float>;                          \
      return __VA_ARGS__();                                      \
    }                                                            \
    using CELL = pararnn::Lstm<float>;                           \
    return __VA_ARGS__();                                        \
  }()

// Every launch is followed by this check.
#define NLSEQ_CUDA_RETURN_IF_ERROR()                             \
  do {                                                           \
    const cudaError_t err_ = cudaGetLastError();                 \
    if (err_ != cudaSuccess) return err_;                        \
  } while (0)

namespace nlseq {
namespace cuda {

using namespace pararnn_detail;

namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t num_chunks(const PararnnShape& s) { return cdiv(s.T, s.L); }
int64_t newton_updates(const PararnnShape& s, int64_t max_iters) {
  return std::max<int64_t>(0, std::min<int64_t>(max_iters, num_chunks(s) - 1));
}

bool valid_shape(const PararnnShape& s) {
  return s.B > 0 && s.T > 0 && s.N > 0 && s.L >= 1 && s.L <= s.T && s.B <= kPararnnMaxGridYZ &&
         num_chunks(s) <= kPararnnMaxGridYZ && cdiv(s.N, kThreads) <= 0x7fffffff;
}

}  // namespace

int64_t pararnn_chunk_len(int64_t B, int64_t T, int64_t N, int num_sms) {
  if (T <= 0) return 1;
  const int64_t want = int64_t(std::max(num_sms, 1)) * 1024;  // ~ resident threads of the device
  const int64_t channels = std::max<int64_t>(B * N, 1);
  int64_t chunks = std::min(cdiv(want, channels), T / 64);
  chunks = std::max<int64_t>(1, std::min(chunks, kPararnnMaxGridYZ));
  return cdiv(T, chunks);
}

size_t pararnn_fwd_workspace_bytes(const PararnnShape& s, int64_t max_iters) {
  const int64_t S = pararnn::state_size(s.cell), C = num_chunks(s);
  const int64_t floats = s.B * C * S * s.N * (2 + S);  // X, PHI, MT
  return size_t(floats) * sizeof(float) + size_t(newton_updates(s, max_iters) + 1) * sizeof(unsigned);
}

size_t pararnn_bwd_workspace_bytes(const PararnnShape& s) {
  const int64_t S = pararnn::state_size(s.cell), C = num_chunks(s);
  const int64_t floats = s.B * C * s.N * ((S + S * S) + S + 3 + 2);  // QQ, MU, PA, PP
  return size_t(floats) * sizeof(float);
}

cudaError_t pararnn_fwd(const PararnnShape& s, const PararnnFwdArgs& args, void* workspace, cudaStream_t stream) {
  if (!valid_shape(s)) return cudaErrorInvalidValue;
  const int64_t S = pararnn::state_size(s.cell), C = num_chunks(s), K = newton_updates(s, args.max_iters);
  FwdParams p;
  p.U = args.U;
  p.A = args.A;
  p.P = s.cell == pararnn::CellKind::kLstm ? args.P : nullptr;
  p.s0 = args.s0;
  p.S_all = args.S_all;
  float* ws = static_cast<float*>(workspace);
  p.X = ws;
  p.PHI = p.X + s.B * C * S * s.N;
  p.MT = p.PHI + s.B * C * S * s.N;
  p.res = reinterpret_cast<unsigned*>(p.MT + s.B * C * S * S * s.N);
  p.iters = args.iters;
  p.residual = args.residual;
  p.B = s.B;
  p.T = s.T;
  p.N = s.N;
  p.L = s.L;
  p.C = C;
  p.K = K;
  p.tol = args.tol;
  cudaError_t err = cudaMemsetAsync(p.res, 0, size_t(K + 1) * sizeof(unsigned), stream);
  if (err != cudaSuccess) return err;
  const dim3 sweep_grid(unsigned(cdiv(s.N, kThreads)), unsigned(C), unsigned(s.B));
  const dim3 boundary_grid(unsigned(cdiv(s.N, kThreads)), unsigned(s.B));
  err = NLSEQ_PARARNN_CELL_SWITCH(s.cell, CELL, [&] {
    return NLSEQ_PARARNN_IO_SWITCH(s.io, T, [&] {
      for (int64_t k = 0; k <= K; ++k) {
        if (k == 0) {
          fwd_sweep_kernel<CELL, T, true><<<sweep_grid, kThreads, 0, stream>>>(p, 0);
        } else {
          fwd_sweep_kernel<CELL, T, false><<<sweep_grid, kThreads, 0, stream>>>(p, int(k));
        }
        NLSEQ_CUDA_RETURN_IF_ERROR();
        if (C > 1) {
          fwd_boundary_kernel<CELL, T><<<boundary_grid, kThreads, 0, stream>>>(p, int(k));
          NLSEQ_CUDA_RETURN_IF_ERROR();
        }
      }
      return cudaSuccess;
    });
  });
  if (err != cudaSuccess) return err;
  fwd_finalize_kernel<<<1, 1, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t pararnn_bwd(const PararnnShape& s, const PararnnBwdArgs& args, void* workspace, cudaStream_t stream) {
  if (!valid_shape(s)) return cudaErrorInvalidValue;
  const int64_t S = pararnn::state_size(s.cell), C = num_chunks(s);
  BwdParams p;
  p.U = args.U;
  p.A = args.A;
  p.P = s.cell == pararnn::CellKind::kLstm ? args.P : nullptr;
  p.s0 = args.s0;
  p.S_all = args.S_all;
  p.dS = args.dS;
  p.ds_last = args.ds_last;
  p.dU = args.dU;
  p.dA = args.dA;
  p.dP = args.dP;
  p.ds0 = args.ds0;
  float* ws = static_cast<float*>(workspace);
  p.QQ = ws;
  p.MU = p.QQ + s.B * C * (S + S * S) * s.N;
  p.PA = p.MU + s.B * C * S * s.N;
  p.PP = p.P != nullptr ? p.PA + s.B * C * 3 * s.N : nullptr;
  p.B = s.B;
  p.T = s.T;
  p.N = s.N;
  p.L = s.L;
  p.C = C;
  const dim3 chunk_grid(unsigned(cdiv(s.N, kThreads)), unsigned(C), unsigned(s.B));
  const dim3 carry_grid(unsigned(cdiv(s.N, kThreads)), unsigned(s.B));
  cudaError_t err = NLSEQ_PARARNN_CELL_SWITCH(s.cell, CELL, [&] {
    return NLSEQ_PARARNN_IO_SWITCH(s.io, T, [&] {
      if (C > 1) {
        bwd_chunk_kernel<CELL, T, false><<<chunk_grid, kThreads, 0, stream>>>(p);
        NLSEQ_CUDA_RETURN_IF_ERROR();
      }
      bwd_carry_kernel<CELL::S, T><<<carry_grid, kThreads, 0, stream>>>(p);
      NLSEQ_CUDA_RETURN_IF_ERROR();
      bwd_chunk_kernel<CELL, T, true><<<chunk_grid, kThreads, 0, stream>>>(p);
      NLSEQ_CUDA_RETURN_IF_ERROR();
      return cudaSuccess;
    });
  });
  if (err != cudaSuccess) return err;
  const int64_t M = s.B * C;
  reduce_partials_kernel<<<unsigned(cdiv(3 * s.N, 256)), 256, 0, stream>>>(p.PA, p.dA, M, 3, s.N);
  NLSEQ_CUDA_RETURN_IF_ERROR();
  if (p.dP != nullptr) {
    if (p.PP != nullptr) {
      reduce_partials_kernel<<<unsigned(cdiv(2 * s.N, 256)), 256, 0, stream>>>(p.PP, p.dP, M, 2, s.N);
    } else {
      fill_zero_kernel<<<unsigned(cdiv(2 * s.N, 256)), 256, 0, stream>>>(p.dP, 2 * s.N);
    }
    NLSEQ_CUDA_RETURN_IF_ERROR();
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace nlseq
