// Torch glue of softplus: checks, allocation, and the hand-off to the CPU loops or the CUDA
// launcher. Any shape; the result is contiguous.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "../common/checks.h"
#include "../common/dispatch.h"
#include "softplus_launch.h"

namespace omnifast {
namespace {

constexpr const char* kOp = "softplus";

at::Tensor softplus(const at::Tensor& x, double beta, double threshold) {
  check_defined(kOp, "x", x);
  const auto dtype = x.scalar_type();
  OMNIFAST_CHECK_ARG(dtype == at::kFloat || dtype == at::kDouble, kOp, "x", "float32 or float64",
                     dtype);
  OMNIFAST_CHECK_ARG(x.is_cpu() || x.is_cuda(), kOp, "x", "on a CPU or CUDA device",
                     x.device().str());
  OMNIFAST_CHECK_ARG(std::isfinite(beta) && beta > 0, kOp, "beta", "a finite number above 0", beta);
  OMNIFAST_CHECK_ARG(!std::isnan(threshold), kOp, "threshold", "a number", threshold);
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  const bool is_double = dtype == at::kDouble;
  const int64_t n = in.numel();
  run_on(
      kOp, in,
      [&] { softplus_cpu(n, is_double, in.const_data_ptr(), out.data_ptr(), beta, threshold); },
      [&](void* stream) {
        return softplus_cuda(n, is_double, in.const_data_ptr(), out.data_ptr(), beta, threshold,
                             stream);
      });
  return out;
}

}  // namespace
}  // namespace omnifast

TORCH_LIBRARY_IMPL(omnifast, CPU, m) { m.impl("softplus", &omnifast::softplus); }

#ifdef OMNIFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(omnifast, CUDA, m) { m.impl("softplus", &omnifast::softplus); }
#endif
