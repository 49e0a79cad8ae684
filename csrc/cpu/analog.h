// C++ CPU kernel of the fused analog crossbar + NL-ADC op (docs/spec.md §3). Inputs are validated and
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

namespace nlseq {
namespace cpu {

// The whole analog LSTM or GRU layer in one call (inference): per step t the fused crossbar pass
// on [x_t; h; 1] with Philox offset (offset + t), then the cell update from the 4H gate levels:
// LSTM (torch order i, f, g, o): c = f⊙c + i⊙g, h = o⊙tanh_adc(c);
// GRU (AnalogGRU's columns r, z, xn, hn): n = tanh_adc(xn + r⊙hn), h = (1 − z)⊙n + z⊙h.
// x [T, B, I]; weight [4H, I+H+1]; col_scale [4H]; thresholds [4H, L−1]; levels [4H, L];
// cell_thresholds [H, Lc−1] (in units of the ADC's input); cell_levels [Lc]; h0 [B, H];
// c0 [B, H] (LSTM; unused for the GRU). Writes out [T, B, H], h_n [B, H] and c_n [B, H] (LSTM).
void analog_rnn_fwd(bool gru, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                    const at::Tensor& thresholds, const at::Tensor& levels, const at::Tensor& cell_thresholds,
                    const at::Tensor& cell_levels, const at::Tensor& h0, const at::Tensor& c0, int64_t in_bits,
                    double x_max, double noise_a, double noise_b, int64_t seed, int64_t offset, at::Tensor& out,
                    at::Tensor& h_n, at::Tensor& c_n);

}  // namespace cpu
}  // namespace nlseq
