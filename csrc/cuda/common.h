// Host-side declarations shared by the CUDA launchers and the torch bindings. Torch-free: the
// bindings (csrc/torch/*.cpp, g++) include it, and so do the kernels (csrc/cuda/*.cu, nvcc).
#pragma once
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace nlseq {
namespace cuda {

// Element types the CUDA kernels accept for input and output; accumulation is always float32.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "unknown";
}

}  // namespace cuda
}  // namespace nlseq

// Every CUDA runtime call and every kernel launch is checked; a failure throws
// std::runtime_error (the binding turns it into a TORCH_CHECK error naming the op).
#define NLSEQ_CUDA_CHECK(expr)                                                                   \
  do {                                                                                           \
    const cudaError_t nlseq_err_ = (expr);                                                       \
    if (nlseq_err_ != cudaSuccess)                                                               \
      throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(nlseq_err_) +   \
                               " (" #expr ") at " __FILE__ ":" + std::to_string(__LINE__));      \
  } while (0)

// After a <<<...>>> launch: launch-configuration errors (and sticky errors of earlier kernels).
#define NLSEQ_CUDA_CHECK_LAUNCH() NLSEQ_CUDA_CHECK(cudaGetLastError())
