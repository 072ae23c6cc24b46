// The boundary between the torch glue (bias_act_ops.cpp) and the backends. Plain C++.
#pragma once

#include <cstdint>

#include "bias_act.h"

namespace omnifast {

// x and out (and grad) are contiguous [rows * inner] with rows = N * C: element i has channel
// (i / inner) % channels. bias: [channels] or nullptr.
struct BiasActShape {
  int64_t numel, channels, inner;
  double positive, negative, clamp;  // clamp < 0: none
};

void bias_act_cpu(const BiasActShape& s, bool is_double, const void* x, const void* bias,
                  void* out);
void bias_act_grad_cpu(const BiasActShape& s, bool is_double, const void* grad, const void* y,
                       void* out);
// On the given cudaStream_t; nullptr on success, else the CUDA error string.
const char* bias_act_cuda(const BiasActShape& s, bool is_double, const void* x, const void* bias,
                          void* out, void* stream);
const char* bias_act_grad_cuda(const BiasActShape& s, bool is_double, const void* grad,
                               const void* y, void* out, void* stream);

template <typename T>
BiasActSlopes<T> slopes_of(const BiasActShape& s) {
  return {static_cast<T>(s.positive), static_cast<T>(s.negative),
          static_cast<T>(s.clamp < 0 ? 0 : s.clamp), s.clamp >= 0};
}

}  // namespace omnifast
