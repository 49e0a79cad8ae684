// Input checks for the binding layer: every message names the op, the argument and what was
// expected. The Python ops check first with friendlier messages; these guard direct callers.
#pragma once
#include <ATen/ATen.h>

#define NLSEQ_CHECK_DIM(op, x, n, layout) \
  TORCH_CHECK((x).dim() == (n), op, ": " #x " must have ", n, " dimensions ", layout, ", got ", (x).sizes())

#define NLSEQ_CHECK_SHAPE(op, x, ...)                                                                  \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), op, ": " #x " must have shape ",         \
              at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())

#define NLSEQ_CHECK_SAME(op, x, ref)                                                                   \
  TORCH_CHECK((x).scalar_type() == (ref).scalar_type(), op, ": " #x " must have the dtype of " #ref  \
              " (", (ref).scalar_type(), "), got ", (x).scalar_type());                              \
  TORCH_CHECK((x).device() == (ref).device(), op, ": " #x " must be on the device of " #ref " (",     \
              (ref).device(), "), got ", (x).device())

#define NLSEQ_CHECK_CONTIGUOUS(op, x) TORCH_CHECK((x).is_contiguous(), op, ": " #x " must be contiguous")

#include <cstdlib>
#include <limits>

namespace nlseq {

// NLSEQ_POISON=1 (set by the test suite) fills every output buffer with NaN before a kernel
// writes it, so an element a kernel forgets to write fails the comparison instead of passing
// with stale memory.
inline bool poison_outputs() {
  static const bool on = [] {
    const char* v = std::getenv("NLSEQ_POISON");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return on;
}

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (poison_outputs() && at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

inline at::Tensor empty_output_like(const at::Tensor& like) { return empty_output(like.sizes(), like.options()); }

}  // namespace nlseq
