// Hands an op's work to the CPU loops or to the CUDA launcher, for the device of `on`.
#pragma once

#include <ATen/ATen.h>

#ifdef OMNIFAST_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif
#ifdef OMNIFAST_WITH_SIMT
#include "../simt/simt_control.h"
#endif

namespace omnifast {

// Whether the op runs its CUDA launchers for tensors on the device of `on`: CUDA tensors, and in
// a SIMT build CPU tensors while the routing is on (the kernels then run on the CPU, with host
// memory standing in for device memory). Everything that differs between the CPU loops and the
// CUDA kernels (zero-filled buffers, 16-bit storage, the row walk) asks this.
inline bool runs_cuda_kernels(const at::Tensor& on) {
#ifdef OMNIFAST_WITH_SIMT
  if (on.is_cpu() && simt_routing().load()) return true;
#endif
  return on.is_cuda();
}

// cpu(): runs the loops. cuda(stream): launches on that cudaStream_t and returns nullptr or the
// CUDA error string, raised here with the op's name.
template <typename CpuFn, typename CudaFn>
void run_on(const char* op, const at::Tensor& on, CpuFn cpu, CudaFn cuda) {
  if (!runs_cuda_kernels(on)) {
    cpu();
    return;
  }
#if defined(OMNIFAST_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(on.device());
  const char* err = cuda(static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()));
  TORCH_CHECK(err == nullptr, "omnifast.", op, ": CUDA kernel launch failed: ", err);
#elif defined(OMNIFAST_WITH_SIMT)
  TORCH_CHECK(on.is_cpu(), "omnifast.", op,
              ": the SIMT build runs its CUDA kernels on CPU tensors only, got a tensor on ",
              on.device().str(), "; reinstall without OMNIFAST_SIMT=1 for a GPU");
  const char* err = cuda(nullptr);
  TORCH_CHECK(err == nullptr, "omnifast.", op, ": CUDA kernel failed (SIMT execution): ", err);
#else
  (void)cuda;
  TORCH_CHECK(false, "omnifast.", op,
              ": this build has no CUDA kernels; reinstall with OMNIFAST_CUDA=1 and nvcc");
#endif
}

}  // namespace omnifast
