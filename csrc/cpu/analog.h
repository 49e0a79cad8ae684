// C++ CPU kernel of the fused analog crossbar + NL-ADC op (SPEC.md §3). Inputs are validated and
// the output allocated by the binding layer (csrc/torch/analog.cpp); all tensors float32, contiguous.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace nlseq {
namespace cpu {

// y [M, N] = levels[n, #{k : I > thresholds[n, k]}], I = (DAC(x) @ weightᵀ)·col_scale + σ·z
// (python/nlseq/reference/analog.py has the full definition).
void analog_mvm_fwd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                    const at::Tensor& thresholds, const at::Tensor& levels, const c10::optional<at::Tensor>& noise,
                    int64_t in_bits, double x_max, double noise_a, double noise_b, int64_t seed, int64_t offset,
                    at::Tensor& y);

}  // namespace cpu
}  // namespace nlseq
