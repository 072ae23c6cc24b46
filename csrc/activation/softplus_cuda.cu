// CUDA kernel over the shared softplus math (softplus.h): one element per thread. CUDA runtime
// and project headers only.
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_launch.cuh"
#include "softplus.h"
#include "softplus_launch.h"

namespace omnifast {
namespace {

template <typename T>
__global__ void softplus_kernel(int64_t n, const T* x, T* out, T beta, T threshold) {
  OMNIFAST_THREAD_LOOP(i, n) out[i] = softplus_of<StandardMath>(x[i], beta, threshold);
}

}  // namespace

const char* softplus_cuda(int64_t n, bool is_double, const void* x, void* out, double beta,
                          double threshold, void* stream) {
  if (n == 0) return nullptr;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  return launched([&] {
    if (is_double) {
      OMNIFAST_LAUNCH(grid_for(n), kThreads, cuda_stream, softplus_kernel<double>)
      (n, static_cast<const double*>(x), static_cast<double*>(out), beta, threshold);
    } else {
      OMNIFAST_LAUNCH(grid_for(n), kThreads, cuda_stream, softplus_kernel<float>)
      (n, static_cast<const float*>(x), static_cast<float*>(out), static_cast<float>(beta),
       static_cast<float>(threshold));
    }
  });
}

}  // namespace omnifast
