// exp and log1p written as branch-free float arithmetic, for the CPU loops that evaluate them over
// whole rays: the compiler vectorises a loop calling these, where glibc's expf and log1pf are one
// scalar call per element (and expf takes a slow path on underflow). The range reductions and
// polynomials are Cephes' (at most 1.4 and 2.8 ulp measured over the float range).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "host_device.h"  // OMNIFAST_HD: forced inlining, so that calling loops vectorise

namespace omnifast {
namespace vector_math {

OMNIFAST_HD float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

OMNIFAST_HD int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

OMNIFAST_HD float exp(float x) {
  // Below -87.34 the result is 0 (denormals flushed), above 88.72 inf; NaN stays NaN.
  const float lo = -87.33654f, hi = 88.72283f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);
  // x = n ln2 + r, |r| <= ln2 / 2; n by the add-and-subtract rounding trick (no SSE4.1 needed).
  const float round_magic = 12582912.0f;  // 1.5 * 2^23
  const float n = (xc * 1.44269504088896341f + round_magic) - round_magic;
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n in two factors, since n = 128 (near the overflow) has no float exponent of its own.
  const int32_t n_int = static_cast<int32_t>(n), half = n_int >> 1;
  const float y = p * bits_to_float((half + 127) << 23) * bits_to_float((n_int - half + 127) << 23);
  return x != x ? x : (x < lo ? 0.0f : (x > hi ? HUGE_VALF : y));
}

// For x > -1 (the callers pass exponentials).
OMNIFAST_HD float log1p(float x) {
  // log(u) for u = 1 + x, corrected by x / (u - 1) for the rounding of u (Goldberg's trick).
  const float u = 1.0f + x;
  const int32_t bits = float_to_bits(u);
  int32_t exponent = ((bits >> 23) & 0xff) - 127;
  float m = bits_to_float((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;  // [sqrt(1/2), sqrt(2)]
  exponent += high ? 1 : 0;
  const float e = static_cast<float>(exponent);
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float log_u = (f + ((p * f * z - 2.12194440e-4f * e) - 0.5f * z)) + 0.693359375f * e;
  const float y = u == 1.0f ? x : log_u * (x / (u - 1.0f));
  return (x != x || x == HUGE_VALF) ? x : y;  // NaN stays NaN, log1p(inf) = inf
}

}  // namespace vector_math

// The math policy of the shared kernels' density functions (common/host_device.h's StandardMath).
struct VectorMath {
  static OMNIFAST_HD float exp(float x) { return vector_math::exp(x); }
  static OMNIFAST_HD float log1p(float x) { return vector_math::log1p(x); }
};
}  // namespace omnifast
