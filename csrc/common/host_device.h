// Shared by the host compiler and nvcc: the macro that lets one piece of math serve both backends.
#pragma once

#include <cmath>
#include <cstdint>

// Always inlined, on both sides: each call site passes constants (which planes, which outputs)
// that the compiler can then fold away.
#if defined(__CUDACC__)
#define OMNIFAST_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define OMNIFAST_HD inline __attribute__((always_inline))
#else
#define OMNIFAST_HD inline
#endif

// Loop unrolling hint for nvcc; host compilers unroll on their own and would warn about it.
#if defined(__CUDA_ARCH__) && !defined(OMNIFAST_SIMT)
#define OMNIFAST_UNROLL _Pragma("unroll")
#define OMNIFAST_NO_UNROLL _Pragma("unroll 1")
#else
#define OMNIFAST_UNROLL
#define OMNIFAST_NO_UNROLL
#endif

// Loop over the first `count` of a chunk of VEC channels. On the device the trip count is the
// constant VEC (fully unrolled, so per-channel arrays live in registers); on the host it is
// `count` (a plain loop the compiler vectorises).
#if defined(__CUDA_ARCH__)
#define OMNIFAST_CHANNEL_LOOP(v, count, VEC) \
  OMNIFAST_UNROLL for (int v = 0; v < (VEC); ++v) if (v < (count))
#else
#define OMNIFAST_CHANNEL_LOOP(v, count, VEC) for (int v = 0; v < (count); ++v)
#endif

// CPU loops compiled twice where the toolchain can: for AVX2 + FMA (x86-64-v3) and for the
// baseline, the loader picking the one the CPU runs (vector math; fma_of as one instruction).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__CUDACC__)
#define OMNIFAST_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define OMNIFAST_VECTOR_CLONES
#endif

namespace omnifast {

// Conversions between a storage type and the accumulation type. CUDA's 16-bit types get
// explicit specialisations (cuda_half.cuh): torch compiles extensions with their implicit
// conversions switched off (__CUDA_NO_HALF_CONVERSIONS__ and friends).
template <typename T>
struct Storage {
  template <typename A>
  static OMNIFAST_HD A to(T x) {
    return static_cast<A>(x);
  }
  template <typename A>
  static OMNIFAST_HD T from(A x) {
    return static_cast<T>(x);
  }
};

template <typename A, typename T>
OMNIFAST_HD A load_as(T x) {
  return Storage<T>::template to<A>(x);
}

template <typename T, typename A>
OMNIFAST_HD T store_as(A x) {
  return Storage<T>::template from<A>(x);
}

// Math both compilers see under one name: the CUDA device functions on the device, <cmath> on
// the host. floor_of is defined for the whole float range (callers range-check before casting).
#if defined(__CUDA_ARCH__)
#define OMNIFAST_MATH_FN(name, fn) \
  template <typename T>            \
  OMNIFAST_HD T name(T x) {        \
    return ::fn(x);                \
  }
#else
#define OMNIFAST_MATH_FN(name, fn) \
  template <typename T>            \
  OMNIFAST_HD T name(T x) {        \
    return std::fn(x);             \
  }
#endif
OMNIFAST_MATH_FN(floor_of, floor)
OMNIFAST_MATH_FN(exp_of, exp)
OMNIFAST_MATH_FN(log1p_of, log1p)
OMNIFAST_MATH_FN(log_of, log)
OMNIFAST_MATH_FN(sqrt_of, sqrt)

OMNIFAST_MATH_FN(abs_of, fabs)
#undef OMNIFAST_MATH_FN

// The exponential and log1p that shared math calls by default (a template parameter `Math`); the
// CPU's float32 loops pass vectorisable ones instead (common/vector_math.h).
struct StandardMath {
  template <typename T>
  static OMNIFAST_HD T exp(T x) {
    return exp_of(x);
  }
  template <typename T>
  static OMNIFAST_HD T log1p(T x) {
    return log1p_of(x);
  }
};

// x * y + z with one rounding (exact products for compensated arithmetic).
template <typename T>
OMNIFAST_HD T fma_of(T x, T y, T z) {
#if defined(__CUDA_ARCH__)
  return ::fma(x, y, z);
#else
  return std::fma(x, y, z);
#endif
}

template <typename T>
OMNIFAST_HD T infinity_of() {
  return T(1) / T(0);  // IEEE +inf on both sides, no <limits> in device code
}

template <typename T>
OMNIFAST_HD T nan_of() {
  return infinity_of<T>() - infinity_of<T>();
}

template <typename T>
OMNIFAST_HD T largest_finite();
template <>
OMNIFAST_HD float largest_finite<float>() {
  return 3.40282347e38f;
}
template <>
OMNIFAST_HD double largest_finite<double>() {
  return 1.7976931348623157e308;
}

// The smallest positive normal number: below it the CPU's arithmetic takes slow paths.
template <typename T>
OMNIFAST_HD T smallest_normal();
template <>
OMNIFAST_HD float smallest_normal<float>() {
  return 1.17549435e-38f;
}
template <>
OMNIFAST_HD double smallest_normal<double>() {
  return 2.2250738585072014e-308;
}

template <typename T>
OMNIFAST_HD bool is_finite(T x) {
  return x - x == T(0);  // false for NaN and +-inf
}

// The power of two 2^-e with x * 2^-e in [0.5, 1) for finite x > 0: scaling by it is exact.
template <typename T>
OMNIFAST_HD T inverse_power_of_two(T x) {
  int e = 0;
#if defined(__CUDA_ARCH__)
  ::frexp(x, &e);
  return ::ldexp(T(1), -e);
#else
  std::frexp(x, &e);
  return std::ldexp(T(1), -e);
#endif
}

template <typename T>
OMNIFAST_HD T atan2_of(T y, T x) {
#if defined(__CUDA_ARCH__)
  return ::atan2(y, x);
#else
  return std::atan2(y, x);
#endif
}

}  // namespace omnifast
