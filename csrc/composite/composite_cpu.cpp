// CPU loops over the shared compositing math (composite.h): one worker per ray.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "composite_launch.h"

namespace omnifast {
namespace {

constexpr int kCpuVec = 32;
constexpr ChunkRange kAllChunks{0, 1};
constexpr int64_t kRayGrain = 64;

template <typename T>
T beta_of(const CompositeTensors& t) {
  return t.beta != nullptr ? *static_cast<const T*>(t.beta) : T(1);
}

template <typename T>
void forward(const CompositeShape& s, const CompositeTensors& t) {
  const auto in = composite_inputs<T, T>(t, beta_of<T>(t));
  at::parallel_for(0, s.rays, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      composite_forward_ray<kCpuVec, T, T>(
          s, in, static_cast<T*>(t.features_out), static_cast<T*>(t.opacity),
          static_cast<T*>(t.depth_raw), static_cast<T*>(t.weights), r, kAllChunks, true);
  });
}

template <typename T>
void backward(const CompositeShape& s, const CompositeTensors& t) {
  const auto in = composite_inputs<T, T>(t, beta_of<T>(t));
  const auto grads = composite_grads<T>(t);
  const auto out = composite_grad_outputs<T>(t);
  at::parallel_for(0, s.rays, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      composite_backward_ray<kCpuVec, T, T>(
          s, in, static_cast<const T*>(t.opacity), static_cast<const T*>(t.depth_raw), grads,
          out, r, kAllChunks, true, [](T partial) { return partial; });
  });
}

}  // namespace

void composite_forward_cpu(const CompositeShape& s, StorageType type, const CompositeTensors& t) {
  TORCH_CHECK(type == StorageType::kFloat32 || type == StorageType::kFloat64,
              "omnifast: the CPU compositing kernels take float32 or float64");
  type == StorageType::kFloat64 ? forward<double>(s, t) : forward<float>(s, t);
}

void composite_backward_cpu(const CompositeShape& s, StorageType type, const CompositeTensors& t) {
  TORCH_CHECK(type == StorageType::kFloat32 || type == StorageType::kFloat64,
              "omnifast: the CPU compositing kernels take float32 or float64");
  type == StorageType::kFloat64 ? backward<double>(s, t) : backward<float>(s, t);
}

}  // namespace omnifast
