// Hands an op's work to the CPU loops or to the CUDA launcher, for the device of `on`.
#pragma once

#include <ATen/ATen.h>

#ifdef OMNIFAST_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace omnifast {

// cpu(): runs the loops. cuda(stream): launches on that cudaStream_t and returns nullptr or the
// CUDA error string, raised here with the op's name.
template <typename CpuFn, typename CudaFn>
void run_on(const char* op, const at::Tensor& on, CpuFn cpu, CudaFn cuda) {
  if (on.is_cpu()) {
    cpu();
    return;
  }
#ifdef OMNIFAST_WITH_CUDA
  const c10::cuda::CUDAGuard guard(on.device());
  const char* err = cuda(static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()));
  TORCH_CHECK(err == nullptr, "omnifast.", op, ": CUDA kernel launch failed: ", err);
#else
  (void)cuda;
  TORCH_CHECK(false, "omnifast.", op,
              ": this build has no CUDA kernels; reinstall with OMNIFAST_CUDA=1 and nvcc");
#endif
}

}  // namespace omnifast
