// Storage conversions for CUDA's 16-bit types through the explicit intrinsics, which stay
// available when torch's build switches the implicit conversions off. Include before the math
// headers in a .cu file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "host_device.h"

namespace omnifast {

template <>
struct Storage<__half> {
  template <typename A>
  static __host__ __device__ __forceinline__ A to(__half x) {
    return static_cast<A>(__half2float(x));
  }
  template <typename A>
  static __host__ __device__ __forceinline__ __half from(A x) {
    return __float2half(static_cast<float>(x));
  }
};

template <>
struct Storage<__nv_bfloat16> {
  template <typename A>
  static __host__ __device__ __forceinline__ A to(__nv_bfloat16 x) {
    return static_cast<A>(__bfloat162float(x));
  }
  template <typename A>
  static __host__ __device__ __forceinline__ __nv_bfloat16 from(A x) {
    return __float2bfloat16(static_cast<float>(x));
  }
};

}  // namespace omnifast
