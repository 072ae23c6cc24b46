// Launch helpers shared by the CUDA kernels: how work items split over lanes, the warp-level
// sum, grid sizing, the launch itself and error reporting. CUDA runtime only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace omnifast {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;  // consecutive channels per lane: one 16-byte read of a float32 texel
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// A work item's channels (a point's or a ray's) are split over `lanes` consecutive threads, a
// power of two <= 32, so an item's lanes share a warp and can be summed with shuffles; lane l
// takes chunks l, l + lanes, ...
inline int lanes_for(int64_t channels) {
  const int64_t chunks = (channels + kVec - 1) / kVec;
  int lanes = 1;
  while (lanes < chunks && lanes < 32) lanes *= 2;
  return lanes;
}

inline int log2_of(int power_of_two) {
  int l = 0;
  while ((1 << l) < power_of_two) ++l;
  return l;
}

// Sum over the `lanes` threads of an item's group (every lane of the warp must call it).
template <typename acc_t>
__device__ acc_t group_sum(acc_t v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Grid-stride loop over a thread count rounded up to whole warps: every lane of a warp runs the
// same number of iterations, which the shuffles in group_sum need.
#define OMNIFAST_THREAD_LOOP(i, total)                                          \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); \
       i += int64_t(gridDim.x) * blockDim.x)

inline int64_t whole_warps(int64_t threads) { return (threads + 31) / 32 * 32; }

inline dim3 grid_for(int64_t threads) {
  int64_t blocks = (threads + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return dim3(static_cast<unsigned>(blocks));
}

// `OMNIFAST_LAUNCH(grid, block, stream, kernel)(args...)` launches `kernel` (a name, template
// arguments included) on `stream`: `<<<...>>>` under nvcc, every thread run on the CPU in a SIMT
// build (csrc/simt/simt.h).
#if defined(OMNIFAST_SIMT)
#define OMNIFAST_LAUNCH(grid, block, stream, ...) \
  ::omnifast::simt::launcher(grid, block, stream, __VA_ARGS__)
#else
#define OMNIFAST_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#endif

// Runs a launcher's kernel launches and returns nullptr or the error they caused. An error that
// was pending before (left by earlier asynchronous work, another library's kernel) is reported
// as that, without launching, rather than as this launch's error.
template <typename Launches>
const char* launched(Launches launches) {
  const cudaError_t earlier = cudaGetLastError();  // read once, reported here
  if (earlier != cudaSuccess) {
    static thread_local char message[256];
    snprintf(message, sizeof(message),
             "a CUDA error from earlier work was pending before this launch (not launched): %s",
             cudaGetErrorString(earlier));
    return message;
  }
  launches();
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace
}  // namespace omnifast
