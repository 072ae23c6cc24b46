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
          static_cast<T*>(t.depth_raw), static_cast<T*>(t.weights),
          static_cast<double*>(t.log_transmittance), r, kAllChunks, true);
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
          s, in, static_cast<const T*>(t.opacity), static_cast<const T*>(t.depth_raw),
          static_cast<const double*>(t.log_transmittance), grads, out, r, kAllChunks, true,
          [](T partial) { return partial; });
  });
}

template <typename T>
void importance(const SamplingShape& s, const void* depths, const void* weights, const void* u,
                void* out) {
  at::parallel_for(0, s.rays, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      importance_sample_ray(s, static_cast<const T*>(depths), static_cast<const T*>(weights),
                            static_cast<const T*>(u), static_cast<T*>(out), r);
  });
}

template <typename T>
void merge(int64_t rays, int64_t coarse, int64_t fine, const void* coarse_depths,
           const void* fine_depths, int64_t* order) {
  at::parallel_for(0, rays, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      merge_order_ray(coarse, fine, static_cast<const T*>(coarse_depths),
                      static_cast<const T*>(fine_depths), order, r);
  });
}

}  // namespace

void importance_sample_cpu(const SamplingShape& s, bool is_double, const void* depths,
                           const void* weights, const void* u, void* out) {
  is_double ? importance<double>(s, depths, weights, u, out)
            : importance<float>(s, depths, weights, u, out);
}

void merge_order_cpu(int64_t rays, int64_t coarse, int64_t fine, bool is_double,
                     const void* coarse_depths, const void* fine_depths, int64_t* order) {
  is_double ? merge<double>(rays, coarse, fine, coarse_depths, fine_depths, order)
            : merge<float>(rays, coarse, fine, coarse_depths, fine_depths, order);
}

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
