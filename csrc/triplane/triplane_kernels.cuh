// The tri-plane CUDA kernels and their launches, by pass and grid dimensionality. Each (pass,
// dims) pair is compiled in a .cu file of its own (triplane_<pass>_cuda.cu), so that the build
// compiles them in parallel; triplane_cuda.cu holds the entry points. CUDA runtime only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_half.cuh"
#include "../common/cuda_launch.cuh"
#include "triplane_launch.h"

namespace omnifast {
namespace triplane_cuda {

enum class Pass { kForward, kBackward, kDoubleBackward, kPlaneGradRows };

// The launches of one pass for one storage type, on `stream`; nullptr or the error.
template <Pass PASS, int DIMS>
const char* launch(const TriplaneShape& s, StorageType type, const TriplaneTensors& t,
                   cudaStream_t stream);

template <typename acc_t>
struct AtomicAdd {
  __device__ __forceinline__ void operator()(acc_t* dst, const acc_t* val, int count) const {
    OMNIFAST_CHANNEL_LOOP(v, count, kVec) atomicAdd(dst + v, val[v]);
  }
};

template <>
struct AtomicAdd<float> {
  __device__ __forceinline__ void operator()(float* dst, const float* val, int count) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // sm_90 adds a 16-byte vector in one atomic: a quarter of the scalar atomics.
    if (count == 4 && (reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
      atomicAdd(reinterpret_cast<float4*>(dst), make_float4(val[0], val[1], val[2], val[3]));
      return;
    }
#endif
    OMNIFAST_CHANNEL_LOOP(v, count, kVec) atomicAdd(dst + v, val[v]);
  }
};

struct ThreadPoint {
  bool active;
  int64_t n, m;
  ChunkRange chunks;
};

// Maps a flat thread index to (point, lane). Points are image-major, so the blocks in flight
// read one image's planes and keep them in L2.
__device__ __forceinline__ ThreadPoint thread_point(const TriplaneShape& s, int64_t i, int lanes,
                                                    int log2_lanes) {
  const int64_t point = i >> log2_lanes;
  ThreadPoint tp;
  tp.active = point < s.batch * s.points;
  tp.n = tp.active ? point / s.points : 0;
  tp.m = tp.active ? point % s.points : 0;
  tp.chunks = ChunkRange{i & (lanes - 1), lanes};
  return tp;
}

template <typename acc_t>
__device__ __forceinline__ void write_point_grad(const TriplaneShape& s, const ThreadPoint& tp,
                                                 int lanes, acc_t g[3], acc_t* grad_coords) {
  OMNIFAST_UNROLL
  for (int j = 0; j < 3; ++j) g[j] = group_sum(g[j], lanes);
  if (tp.active && tp.chunks.first == 0) {
    acc_t* dst = grad_coords + (tp.n * s.points + tp.m) * 3;
    OMNIFAST_UNROLL
    for (int j = 0; j < 3; ++j) dst[j] = g[j];
  }
}

template <int DIMS, typename scalar_t, typename acc_t>
__global__ void forward_kernel(TriplaneShape s, TriplaneTensors t, int lanes, int log2_lanes,
                               int64_t total) {
  OMNIFAST_THREAD_LOOP(i, total) {
    const ThreadPoint tp = thread_point(s, i, lanes, log2_lanes);
    if (!tp.active) continue;
    triplane_forward_point<DIMS, kVec, scalar_t, acc_t>(
        s, static_cast<const scalar_t*>(t.planes), static_cast<const acc_t*>(t.coords),
        t.coord_strides, static_cast<scalar_t*>(t.out), tp.n, tp.m, tp.chunks);
  }
}

template <int DIMS, typename scalar_t, typename acc_t>
__global__ void backward_kernel(TriplaneShape s, TriplaneTensors t, int lanes, int log2_lanes,
                                int64_t total) {
  auto grad_coords = static_cast<acc_t*>(t.grad_coords);
  OMNIFAST_THREAD_LOOP(i, total) {
    const ThreadPoint tp = thread_point(s, i, lanes, log2_lanes);
    acc_t g[3] = {acc_t(0), acc_t(0), acc_t(0)};
    if (tp.active)
      triplane_backward_point<DIMS, kVec, scalar_t, acc_t>(
          s, static_cast<const scalar_t*>(t.grad_out), t.grad_strides,
          static_cast<const scalar_t*>(t.planes), static_cast<const acc_t*>(t.coords),
          t.coord_strides, static_cast<acc_t*>(t.grad_planes), grad_coords != nullptr, g, tp.n,
          tp.m, 0, 3, tp.chunks, AtomicAdd<acc_t>());
    if (grad_coords != nullptr) write_point_grad(s, tp, lanes, g, grad_coords);
  }
}

template <int DIMS, typename scalar_t, typename acc_t>
__global__ void double_backward_kernel(TriplaneShape s, TriplaneTensors t, int lanes,
                                       int log2_lanes, int64_t total) {
  auto grad_coords = static_cast<acc_t*>(t.grad_coords);
  OMNIFAST_THREAD_LOOP(i, total) {
    const ThreadPoint tp = thread_point(s, i, lanes, log2_lanes);
    acc_t g[3] = {acc_t(0), acc_t(0), acc_t(0)};
    if (tp.active)
      triplane_double_backward_point<DIMS, kVec, scalar_t, acc_t>(
          s, static_cast<const scalar_t*>(t.grad_out), t.grad_strides,
          static_cast<const scalar_t*>(t.planes), static_cast<const acc_t*>(t.coords),
          t.coord_strides, static_cast<const scalar_t*>(t.gg_planes),
          static_cast<const acc_t*>(t.gg_coords), t.gg_coord_strides, static_cast<scalar_t*>(t.out),
          static_cast<acc_t*>(t.grad_planes), grad_coords != nullptr, g, tp.n, tp.m, 0, 3,
          tp.chunks, AtomicAdd<acc_t>());
    if (grad_coords != nullptr) write_point_grad(s, tp, lanes, g, grad_coords);
  }
}

// One group of `lanes` threads per gradient row; lanes own disjoint channels, so plain adds.
template <int DIMS, typename scalar_t, typename acc_t>
__global__ void plane_grad_rows_kernel(TriplaneShape s, TriplaneTensors t, int lanes,
                                       int log2_lanes, int64_t total) {
  OMNIFAST_THREAD_LOOP(i, total) {
    plane_grad_row<DIMS, kVec, scalar_t, acc_t>(s, t, i >> log2_lanes,
                                                ChunkRange{i & (lanes - 1), lanes});
  }
}

template <Pass PASS, int DIMS, typename scalar_t, typename acc_t>
void launch_typed(const TriplaneShape& s, const TriplaneTensors& t, cudaStream_t stream) {
  const int lanes = lanes_for(s.channels);
  if constexpr (PASS == Pass::kPlaneGradRows) {
    const int64_t total = s.batch * 3 * s.size[2] * s.size[1] * lanes;
    if (total == 0 || s.channels == 0) return;
    OMNIFAST_LAUNCH(grid_for(total), kThreads, stream,
                    plane_grad_rows_kernel<DIMS, scalar_t, acc_t>)
    (s, t, lanes, log2_of(lanes), total);
    return;
  }
  const int64_t threads = s.batch * s.points * lanes;
  const int64_t total = whole_warps(threads);
  if (total == 0 || s.channels == 0) return;
  const int log2_lanes = log2_of(lanes);
  const dim3 grid = grid_for(total);
  if constexpr (PASS == Pass::kForward) {
    OMNIFAST_LAUNCH(grid, kThreads, stream, forward_kernel<DIMS, scalar_t, acc_t>)
    (s, t, lanes, log2_lanes, total);
  } else if constexpr (PASS == Pass::kBackward) {
    OMNIFAST_LAUNCH(grid, kThreads, stream, backward_kernel<DIMS, scalar_t, acc_t>)
    (s, t, lanes, log2_lanes, total);
  } else {
    OMNIFAST_LAUNCH(grid, kThreads, stream, double_backward_kernel<DIMS, scalar_t, acc_t>)
    (s, t, lanes, log2_lanes, total);
  }
}

template <Pass PASS, int DIMS>
const char* launch(const TriplaneShape& s, StorageType type, const TriplaneTensors& t,
                   cudaStream_t stream) {
  return launched([&] {
    switch (type) {
      case StorageType::kFloat32:
        return launch_typed<PASS, DIMS, float, float>(s, t, stream);
      case StorageType::kFloat64:
        return launch_typed<PASS, DIMS, double, double>(s, t, stream);
      case StorageType::kFloat16:
        return launch_typed<PASS, DIMS, __half, float>(s, t, stream);
      case StorageType::kBFloat16:
        return launch_typed<PASS, DIMS, __nv_bfloat16, float>(s, t, stream);
    }
  });
}

// Instantiated in the pass files; declared here so that no other file compiles them again.
#define OMNIFAST_TRIPLANE_PASS(PASS, DIMS)                                         \
  template const char* launch<Pass::PASS, DIMS>(const TriplaneShape&, StorageType, \
                                                const TriplaneTensors&, cudaStream_t)
#ifndef OMNIFAST_TRIPLANE_PASS_FILE
extern OMNIFAST_TRIPLANE_PASS(kForward, 2);
extern OMNIFAST_TRIPLANE_PASS(kForward, 3);
extern OMNIFAST_TRIPLANE_PASS(kBackward, 2);
extern OMNIFAST_TRIPLANE_PASS(kBackward, 3);
extern OMNIFAST_TRIPLANE_PASS(kDoubleBackward, 2);
extern OMNIFAST_TRIPLANE_PASS(kDoubleBackward, 3);
extern OMNIFAST_TRIPLANE_PASS(kPlaneGradRows, 2);
extern OMNIFAST_TRIPLANE_PASS(kPlaneGradRows, 3);
#endif

}  // namespace triplane_cuda
}  // namespace omnifast
