// EG3D's bias_act for the leaky ReLU and linear activations: y = clamp(v * slope, +-clamp) with
// v = x + bias, slope `positive` where v > 0 and `negative` elsewhere (both already times the
// gain). Its gradient depends on the output alone, so that the backward keeps only y (as
// EG3D's CUDA plugin does), and it is linear in the upstream gradient, so the double backward
// (R1) is the same function again. Shared by the CPU loops and the CUDA kernel.
#pragma once

#include "../common/host_device.h"

namespace omnifast {

template <typename T>
struct BiasActSlopes {
  T positive, negative, clamp;  // clamp >= 0
  bool clamped;
};

template <typename T>
OMNIFAST_HD T bias_act_value(T x, T bias, const BiasActSlopes<T>& s) {
  const T v = x + bias;
  const T y = v * (v > T(0) ? s.positive : s.negative);
  if (!s.clamped) return y;
  return y < -s.clamp ? -s.clamp : (y > s.clamp ? s.clamp : y);  // NaN stays NaN
}

// d y / d x times `grad`, from the output y (slopes > 0: y > 0 exactly where v > 0); 0 where
// the clamp holds y (|y| not below clamp).
template <typename T>
OMNIFAST_HD T bias_act_gradient(T grad, T y, const BiasActSlopes<T>& s) {
  const T slope = y > T(0) ? s.positive : s.negative;
  const bool passes = !s.clamped || (y < s.clamp && y > -s.clamp);
  return passes ? grad * slope : T(0);
}

}  // namespace omnifast
