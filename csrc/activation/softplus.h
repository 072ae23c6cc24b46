// softplus(x) = log(1 + exp(beta x)) / beta, returning x where beta x > threshold (PyTorch's
// definition), shared by the CPU loops and the CUDA kernel. It is evaluated as
// (max(beta x, 0) + log1p(exp(-|beta x|))) / beta, so that exp never overflows, in two steps
// (the tail exp(-|beta x|), then the rest) that a CPU loop can run as two vectorised passes.
// Where the result (or, in the CPU's float32 math, exp(beta x)) is below the smallest normal
// number, 0 is returned: computing it would take the CPU's slow path for subnormal numbers, and
// it is smaller than anything a float32 network adds to it.
#pragma once

#include "../common/host_device.h"

namespace omnifast {

template <typename Math, typename T>
OMNIFAST_HD T softplus_tail(T x, T beta) {
  const T z = x * beta;
  return Math::exp(z < T(0) ? z : -z);
}

template <typename Math, typename T>
OMNIFAST_HD T softplus_from_tail(T x, T tail, T beta, T threshold) {
  const T z = x * beta;
  const T log_term = Math::log1p(tail);
  const T kept = log_term < smallest_normal<T>() * beta ? T(0) : log_term;
  const T y = ((z > T(0) ? z : T(0)) + kept) / beta;
  return z > threshold ? x : y;
}

template <typename Math, typename T>
OMNIFAST_HD T softplus_of(T x, T beta, T threshold) {
  return softplus_from_tail<Math>(x, softplus_tail<Math>(x, beta), beta, threshold);
}

}  // namespace omnifast
