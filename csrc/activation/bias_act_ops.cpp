// Torch glue of bias_act and its gradient: checks, allocation, and the hand-off to the CPU loops
// or the CUDA launchers. x is [N, C, *] (channels on dim 1); results are contiguous.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>

#include "../common/checks.h"
#include "../common/dispatch.h"
#include "bias_act_launch.h"

namespace omnifast {
namespace {

constexpr const char* kOp = "bias_act";

void check_float(const char* arg, const at::Tensor& t) {
  check_defined(kOp, arg, t);
  const auto dtype = t.scalar_type();
  OMNIFAST_CHECK_ARG(dtype == at::kFloat || dtype == at::kDouble, kOp, arg, "float32 or float64",
                     dtype);
  OMNIFAST_CHECK_ARG(t.is_cpu() || t.is_cuda(), kOp, arg, "on a CPU or CUDA device",
                     t.device().str());
}

BiasActShape shape_of_call(const at::Tensor& x, double positive, double negative,
                           const std::optional<double>& clamp) {
  OMNIFAST_CHECK_ARG(x.dim() >= 2, kOp, "x", "[N, C, *] (2 dims or more)", shape_of(x));
  OMNIFAST_CHECK_ARG(std::isfinite(positive) && positive > 0, kOp, "positive slope",
                     "a finite number above 0", positive);
  OMNIFAST_CHECK_ARG(std::isfinite(negative) && negative >= 0, kOp, "negative slope",
                     "a finite number, 0 or above", negative);
  OMNIFAST_CHECK_ARG(!clamp || (std::isfinite(*clamp) && *clamp >= 0), kOp, "clamp",
                     "None or a finite number, 0 or above", clamp ? *clamp : 0.0);
  const int64_t inner = x.size(0) == 0 || x.size(1) == 0 ? 1 : x.numel() / (x.size(0) * x.size(1));
  return {x.numel(), x.size(1), inner, positive, negative, clamp ? *clamp : -1.0};
}

at::Tensor bias_act(const at::Tensor& x, const std::optional<at::Tensor>& bias, double positive,
                    double negative, std::optional<double> clamp) {
  check_float("x", x);
  const BiasActShape s = shape_of_call(x, positive, negative, clamp);
  at::Tensor b;
  if (bias && bias->defined()) {
    b = *bias;
    check_same_device(kOp, "bias", b, "x", x);
    check_shape(kOp, "bias", b, {x.size(1)});
    OMNIFAST_CHECK_ARG(b.scalar_type() == x.scalar_type(), kOp, "bias",
                       std::string("of the dtype of x (") + c10::toString(x.scalar_type()) + ")",
                       b.scalar_type());
    b = b.contiguous();
  }
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  const bool is_double = x.scalar_type() == at::kDouble;
  const void* bias_ptr = b.defined() ? b.const_data_ptr() : nullptr;
  run_on(
      kOp, in, [&] { bias_act_cpu(s, is_double, in.const_data_ptr(), bias_ptr, out.data_ptr()); },
      [&](void* stream) {
        return bias_act_cuda(s, is_double, in.const_data_ptr(), bias_ptr, out.data_ptr(), stream);
      });
  return out;
}

at::Tensor bias_act_grad(const at::Tensor& grad, const at::Tensor& y, double positive,
                         double negative, std::optional<double> clamp) {
  check_float("y", y);
  const BiasActShape s = shape_of_call(y, positive, negative, clamp);
  check_defined(kOp, "grad", grad);
  check_same_device(kOp, "grad", grad, "y", y);
  check_shape(kOp, "grad", grad, y.sizes());
  OMNIFAST_CHECK_ARG(grad.scalar_type() == y.scalar_type(), kOp, "grad",
                     std::string("of the dtype of y (") + c10::toString(y.scalar_type()) + ")",
                     grad.scalar_type());
  const at::Tensor g = grad.contiguous(), out_y = y.contiguous();
  at::Tensor out = at::empty_like(out_y);
  const bool is_double = y.scalar_type() == at::kDouble;
  run_on(
      kOp, out_y,
      [&] {
        bias_act_grad_cpu(s, is_double, g.const_data_ptr(), out_y.const_data_ptr(), out.data_ptr());
      },
      [&](void* stream) {
        return bias_act_grad_cuda(s, is_double, g.const_data_ptr(), out_y.const_data_ptr(),
                                  out.data_ptr(), stream);
      });
  return out;
}

}  // namespace
}  // namespace omnifast

TORCH_LIBRARY_IMPL(omnifast, CPU, m) {
  m.impl("bias_act", &omnifast::bias_act);
  m.impl("bias_act_grad", &omnifast::bias_act_grad);
}

#ifdef OMNIFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(omnifast, CUDA, m) {
  m.impl("bias_act", &omnifast::bias_act);
  m.impl("bias_act_grad", &omnifast::bias_act_grad);
}
#endif
