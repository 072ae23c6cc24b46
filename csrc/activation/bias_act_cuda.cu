// CUDA kernels over the shared bias_act math (bias_act.h): one element per thread. CUDA runtime
// and project headers only.
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_launch.cuh"
#include "bias_act_launch.h"

namespace omnifast {
namespace {

template <typename T>
__global__ void value_kernel(BiasActShape shape, BiasActSlopes<T> s, const T* x, const T* bias,
                             T* out) {
  OMNIFAST_THREAD_LOOP(i, shape.numel) {
    const T b = bias ? bias[(i / shape.inner) % shape.channels] : T(0);
    out[i] = bias_act_value(x[i], b, s);
  }
}

template <typename T>
__global__ void grad_kernel(BiasActShape shape, BiasActSlopes<T> s, const T* grad, const T* y,
                            T* out) {
  OMNIFAST_THREAD_LOOP(i, shape.numel) out[i] = bias_act_gradient(grad[i], y[i], s);
}

template <typename T>
const char* launch_values(const BiasActShape& shape, const void* x, const void* bias, void* out,
                          void* stream) {
  if (shape.numel == 0) return nullptr;
  return launched([&] {
    OMNIFAST_LAUNCH(grid_for(shape.numel), kThreads, static_cast<cudaStream_t>(stream),
                    value_kernel<T>)
    (shape, slopes_of<T>(shape), static_cast<const T*>(x), static_cast<const T*>(bias),
     static_cast<T*>(out));
  });
}

template <typename T>
const char* launch_grads(const BiasActShape& shape, const void* grad, const void* y, void* out,
                         void* stream) {
  if (shape.numel == 0) return nullptr;
  return launched([&] {
    OMNIFAST_LAUNCH(grid_for(shape.numel), kThreads, static_cast<cudaStream_t>(stream),
                    grad_kernel<T>)
    (shape, slopes_of<T>(shape), static_cast<const T*>(grad), static_cast<const T*>(y),
     static_cast<T*>(out));
  });
}

}  // namespace

const char* bias_act_cuda(const BiasActShape& s, bool is_double, const void* x, const void* bias,
                          void* out, void* stream) {
  return is_double ? launch_values<double>(s, x, bias, out, stream)
                   : launch_values<float>(s, x, bias, out, stream);
}

const char* bias_act_grad_cuda(const BiasActShape& s, bool is_double, const void* grad,
                               const void* y, void* out, void* stream) {
  return is_double ? launch_grads<double>(s, grad, y, out, stream)
                   : launch_grads<float>(s, grad, y, out, stream);
}

}  // namespace omnifast
