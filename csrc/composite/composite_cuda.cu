// CUDA kernels over the shared compositing math (composite.h). CUDA runtime and project headers
// only. A ray is handled by a group of lanes, each owning a slice of the channels; the per-ray
// scalars are summed across the group with shuffles.
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_half.cuh"
#include "../common/cuda_launch.cuh"
#include "composite_launch.h"

namespace omnifast {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(CompositeShape s, CompositeTensors t, int lanes, int log2_lanes,
                               int64_t total) {
  const auto in = composite_inputs<scalar_t, acc_t>(t);
  OMNIFAST_THREAD_LOOP(i, total) {
    const int64_t r = i >> log2_lanes;
    const ChunkRange chunks{i & (lanes - 1), lanes};
    LiveTerms<scalar_t, acc_t> terms(s, in, r, nullptr);
    composite_forward_ray<kVec, scalar_t, acc_t>(
        s, in, terms, static_cast<acc_t*>(t.features_out), static_cast<acc_t*>(t.opacity),
        static_cast<acc_t*>(t.depth_raw), static_cast<acc_t*>(t.weights),
        static_cast<double*>(t.log_transmittance), r, chunks, chunks.first == 0);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(CompositeShape s, CompositeTensors t, int lanes, int log2_lanes,
                                int64_t total) {
  const auto in = composite_inputs<scalar_t, acc_t>(t);
  const auto grads = composite_grads<acc_t>(t);
  const auto out = composite_grad_outputs<acc_t>(t);
  // `total` covers whole warps; a lane past the last ray walks ray 0 again (so that the group
  // sums see every lane) but writes nothing.
  OMNIFAST_THREAD_LOOP(i, total) {
    const int64_t item = i >> log2_lanes;
    const bool active = item < s.rays;
    const ChunkRange chunks{active ? (i & (lanes - 1)) : s.channels, lanes};
    const int64_t ray = active ? item : 0;
    LiveTerms<scalar_t, acc_t> terms(s, in, ray, static_cast<const double*>(t.log_transmittance));
    composite_backward_ray<kVec, scalar_t, acc_t>(
        s, in, terms, static_cast<const acc_t*>(t.opacity), static_cast<const acc_t*>(t.depth_raw),
        grads, out, ray, chunks, active && (i & (lanes - 1)) == 0,
        [lanes](acc_t partial) { return group_sum(partial, lanes); });
  }
}

template <typename acc_t>
__global__ void importance_kernel(SamplingShape s, const acc_t* depths, const acc_t* weights,
                                  const acc_t* u, acc_t* out) {
  OMNIFAST_THREAD_LOOP(r, s.rays) importance_sample_ray(s, depths, weights, u, out, r);
}

template <typename acc_t>
__global__ void merge_kernel(int64_t rays, int64_t coarse, int64_t fine, const acc_t* c,
                             const acc_t* f, int64_t* order) {
  OMNIFAST_THREAD_LOOP(r, rays) merge_order_ray(coarse, fine, c, f, order, r);
}

enum class Pass { kForward, kBackward };

template <Pass PASS, typename scalar_t, typename acc_t>
const char* launch_typed(const CompositeShape& s, const CompositeTensors& t, cudaStream_t stream) {
  if (s.rays == 0) return nullptr;
  const int lanes = lanes_for(s.channels);
  const int64_t total = whole_warps(s.rays * lanes);
  return launched([&] {
    if constexpr (PASS == Pass::kForward) {
      OMNIFAST_LAUNCH(grid_for(total), kThreads, stream, forward_kernel<scalar_t, acc_t>)
      (s, t, lanes, log2_of(lanes), s.rays * lanes);
    } else {
      OMNIFAST_LAUNCH(grid_for(total), kThreads, stream, backward_kernel<scalar_t, acc_t>)
      (s, t, lanes, log2_of(lanes), total);
    }
  });
}

template <Pass PASS>
const char* launch(const CompositeShape& s, StorageType type, const CompositeTensors& t,
                   void* stream) {
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  switch (type) {
    case StorageType::kFloat32:
      return launch_typed<PASS, float, float>(s, t, cuda_stream);
    case StorageType::kFloat64:
      return launch_typed<PASS, double, double>(s, t, cuda_stream);
    case StorageType::kFloat16:
      return launch_typed<PASS, __half, float>(s, t, cuda_stream);
    case StorageType::kBFloat16:
      return launch_typed<PASS, __nv_bfloat16, float>(s, t, cuda_stream);
  }
  return "omnifast: unknown storage type";
}

}  // namespace

const char* importance_sample_cuda(const SamplingShape& s, bool is_double, const void* depths,
                                   const void* weights, const void* u, void* out, void* stream) {
  if (s.rays == 0) return nullptr;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  return launched([&] {
    if (is_double) {
      OMNIFAST_LAUNCH(grid_for(s.rays), kThreads, cuda_stream, importance_kernel<double>)
      (s, static_cast<const double*>(depths), static_cast<const double*>(weights),
       static_cast<const double*>(u), static_cast<double*>(out));
    } else {
      OMNIFAST_LAUNCH(grid_for(s.rays), kThreads, cuda_stream, importance_kernel<float>)
      (s, static_cast<const float*>(depths), static_cast<const float*>(weights),
       static_cast<const float*>(u), static_cast<float*>(out));
    }
  });
}

const char* merge_order_cuda(int64_t rays, int64_t coarse, int64_t fine, bool is_double,
                             const void* coarse_depths, const void* fine_depths, int64_t* order,
                             void* stream) {
  if (rays == 0) return nullptr;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  return launched([&] {
    if (is_double) {
      OMNIFAST_LAUNCH(grid_for(rays), kThreads, cuda_stream, merge_kernel<double>)
      (rays, coarse, fine, static_cast<const double*>(coarse_depths),
       static_cast<const double*>(fine_depths), order);
    } else {
      OMNIFAST_LAUNCH(grid_for(rays), kThreads, cuda_stream, merge_kernel<float>)
      (rays, coarse, fine, static_cast<const float*>(coarse_depths),
       static_cast<const float*>(fine_depths), order);
    }
  });
}

const char* composite_forward_cuda(const CompositeShape& s, StorageType type,
                                   const CompositeTensors& t, void* stream) {
  return launch<Pass::kForward>(s, type, t, stream);
}

const char* composite_backward_cuda(const CompositeShape& s, StorageType type,
                                    const CompositeTensors& t, void* stream) {
  return launch<Pass::kBackward>(s, type, t, stream);
}

}  // namespace omnifast
