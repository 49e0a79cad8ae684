// torch binding of the analog family: schema of the fused op, input checks, output allocation,
// and the CPU (and, when built with NLSEQ_WITH_CUDA, CUDA) registrations. The straight-through
// autograd rule lives in python/nlseq/ops/analog.py (torch.library.register_autograd).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cpu/analog.h"
#include "binding.h"

#ifdef NLSEQ_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "../cuda/analog.h"
#endif

namespace nlseq {
namespace {

constexpr const char* kOp = "nlseq_ext::analog_mvm_fwd";

// The converters' arguments, as both ops take them: an ADC of L = 2^bits levels (1..16 bits)
// and the DAC's in_bits and x_max.
void check_converters(const char* op, const char* levels_name, int64_t L, int64_t in_bits, double x_max) {
  TORCH_CHECK(L >= 2 && L <= 65536 && (L & (L - 1)) == 0, op, ": ", levels_name,
              " must have L = 2^bits (1..16 bits), got ", L);
  TORCH_CHECK(in_bits == 0 || (in_bits >= 2 && in_bits <= 24), op, ": in_bits must be 0 or in 2..24, got ", in_bits);
  TORCH_CHECK(x_max > 0, op, ": x_max must be > 0, got ", x_max);
}

at::Tensor check_and_allocate(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                              const at::Tensor& thresholds, const at::Tensor& levels,
                              const c10::optional<at::Tensor>& noise, int64_t in_bits, double x_max) {
  NLSEQ_CHECK_DIM(kOp, x, 2, "[M, K]");
  NLSEQ_CHECK_DIM(kOp, weight, 2, "[N, K]");
  NLSEQ_CHECK_DIM(kOp, levels, 2, "[N, L]");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0), L = levels.size(1);
  TORCH_CHECK(x.scalar_type() == at::kFloat, kOp, ": x must be float32, got ", x.scalar_type());
  check_converters(kOp, "levels", L, in_bits, x_max);
  NLSEQ_CHECK_SHAPE(kOp, weight, N, K);
  NLSEQ_CHECK_SHAPE(kOp, col_scale, N);
  NLSEQ_CHECK_SHAPE(kOp, thresholds, N, L - 1);
  for (const at::Tensor* t : {&weight, &col_scale, &thresholds, &levels}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->device() == x.device(), kOp,
                ": weight, col_scale, thresholds and levels must be float32 on the device of x");
    TORCH_CHECK(t->is_contiguous(), kOp, ": weight, col_scale, thresholds and levels must be contiguous");
  }
  NLSEQ_CHECK_CONTIGUOUS(kOp, x);
  if (noise.has_value()) {
    NLSEQ_CHECK_SHAPE(kOp, (*noise), M, N);
    NLSEQ_CHECK_SAME(kOp, (*noise), x);
    NLSEQ_CHECK_CONTIGUOUS(kOp, (*noise));
  }
  return empty_output({M, N}, x.options());
}

at::Tensor analog_mvm_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                              const at::Tensor& thresholds, const at::Tensor& levels,
                              const c10::optional<at::Tensor>& noise, int64_t in_bits, double x_max, double noise_a,
                              double noise_b, int64_t seed, int64_t offset) {
  at::Tensor y = check_and_allocate(x, weight, col_scale, thresholds, levels, noise, in_bits, x_max);
  if (y.numel() > 0)
    cpu::analog_mvm_fwd(x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed,
                        offset, y);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> analog_rnn_fwd_cpu(
    c10::string_view cell, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
    const at::Tensor& thresholds, const at::Tensor& levels, const at::Tensor& cell_thresholds,
    const at::Tensor& cell_levels, const at::Tensor& h0, const c10::optional<at::Tensor>& c0, int64_t in_bits,
    double x_max, double noise_a, double noise_b, int64_t seed, int64_t offset) {
  const char* op = "nlseq_ext::analog_rnn_fwd";
  TORCH_CHECK(cell == "lstm" || cell == "gru", op, ": cell must be \"lstm\" or \"gru\", got \"", std::string(cell),
              "\"");
  const bool gru = cell == "gru";
  TORCH_CHECK(gru != c0.has_value(), op, ": c0 [B, H] is required for the lstm and must be None for the gru");
  NLSEQ_CHECK_DIM(op, x, 3, "[T, B, I]");
  NLSEQ_CHECK_DIM(op, weight, 2, "[4H, I+H+1]");
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), N = weight.size(0), H = N / 4;
  TORCH_CHECK(N % 4 == 0 && weight.size(1) == I + H + 1, op, ": weight must have shape [4H, I+H+1], got ",
              weight.sizes());
  const int64_t L = levels.size(-1), Lc = cell_levels.size(-1);
  check_converters(op, "levels", L, in_bits, x_max);
  check_converters(op, "cell_levels", Lc, in_bits, x_max);
  NLSEQ_CHECK_SHAPE(op, col_scale, N);
  NLSEQ_CHECK_SHAPE(op, thresholds, N, L - 1);
  NLSEQ_CHECK_SHAPE(op, levels, N, L);
  NLSEQ_CHECK_SHAPE(op, cell_thresholds, H, Lc - 1);
  NLSEQ_CHECK_SHAPE(op, cell_levels, Lc);
  NLSEQ_CHECK_SHAPE(op, h0, B, H);
  const at::Tensor c0_or_h0 = gru ? h0 : *c0;  // the GRU has no c: h0 stands in, unread
  NLSEQ_CHECK_SHAPE(op, c0_or_h0, B, H);
  for (const at::Tensor* t :
       {&x, &weight, &col_scale, &thresholds, &levels, &cell_thresholds, &cell_levels, &h0, &c0_or_h0}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(), op,
                ": every tensor must be float32, contiguous, on the CPU");
  }
  at::Tensor out = empty_output({T, B, H}, x.options());
  at::Tensor h_n = empty_output({B, H}, x.options());
  at::Tensor c_n = gru ? at::empty({0}, x.options()) : empty_output({B, H}, x.options());
  cpu::analog_rnn_fwd(gru, x, weight, col_scale, thresholds, levels, cell_thresholds, cell_levels, h0, c0_or_h0,
                      in_bits, x_max, noise_a, noise_b, seed, offset, out, h_n, c_n);
  return {out, h_n, c_n};
}

#ifdef NLSEQ_WITH_CUDA
at::Tensor analog_mvm_fwd_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& col_scale,
                               const at::Tensor& thresholds, const at::Tensor& levels,
                               const c10::optional<at::Tensor>& noise, int64_t in_bits, double x_max, double noise_a,
                               double noise_b, int64_t seed, int64_t offset) {
  at::Tensor y = check_and_allocate(x, weight, col_scale, thresholds, levels, noise, in_bits, x_max);
  if (y.numel() == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::AnalogMvmArgs args;
  args.x = x.data_ptr<float>();
  args.weight = weight.data_ptr<float>();
  args.col_scale = col_scale.data_ptr<float>();
  args.thresholds = thresholds.data_ptr<float>();
  args.levels = levels.data_ptr<float>();
  args.noise = noise.has_value() ? noise->data_ptr<float>() : nullptr;
  args.y = y.data_ptr<float>();
  args.M = x.size(0);
  args.K = x.size(1);
  args.N = weight.size(0);
  args.L = static_cast<int>(levels.size(1));
  args.in_bits = static_cast<int>(in_bits);
  args.x_max = x_max;
  args.noise_a = static_cast<float>(noise_a);
  args.noise_b = static_cast<float>(noise_b);
  args.seed = static_cast<uint64_t>(seed);
  args.offset = static_cast<uint64_t>(offset);
  // the kernel tiles M over launches (gridDim.y <= 65535); N goes on gridDim.x in tiles of 64
  TORCH_CHECK(args.N <= int64_t(0x7fffffff) * 64, kOp, ": the CUDA kernel takes at most 2^31 - 1 column tiles of 64, got N = ",
              args.N);
  const cudaError_t err = cuda::analog_mvm_fwd(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kOp, ": CUDA kernel failed: ", cudaGetErrorString(err));
  return y;
}
#endif

}  // namespace
}  // namespace nlseq

TORCH_LIBRARY_FRAGMENT(nlseq_ext, m) {
  m.def("analog_mvm_fwd(Tensor x, Tensor weight, Tensor col_scale, Tensor thresholds, Tensor levels, Tensor? noise,"
        " int in_bits, float x_max, float noise_a, float noise_b, int seed, int offset) -> Tensor");
  // The whole analog LSTM / GRU layer, inference (csrc/cpu/analog.h); c_n is empty for the gru.
  m.def("analog_rnn_fwd(str cell, Tensor x, Tensor weight, Tensor col_scale, Tensor thresholds, Tensor levels,"
        " Tensor cell_thresholds, Tensor cell_levels, Tensor h0, Tensor? c0, int in_bits, float x_max,"
        " float noise_a, float noise_b, int seed, int offset) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nlseq_ext, CPU, m) {
  m.impl("analog_mvm_fwd", &nlseq::analog_mvm_fwd_cpu);
  m.impl("analog_rnn_fwd", &nlseq::analog_rnn_fwd_cpu);
}

#ifdef NLSEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(nlseq_ext, CUDA, m) { m.impl("analog_mvm_fwd", &nlseq::analog_mvm_fwd_cuda); }
#endif
