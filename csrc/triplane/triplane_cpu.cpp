// CPU loops over the shared tri-plane math (triplane.h).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "triplane_launch.h"

namespace omnifast {
namespace {

// A CPU worker handles a point's channels VEC at a time: one chunk for EG3D's 32 channels, so each
// plane worker reads and writes whole texel rows.
constexpr int kCpuVec = 32;
constexpr ChunkRange kAllChunks{0, 1};
constexpr int64_t kPointGrain = 256;

template <typename acc_t>
struct PlainAdd {
  void operator()(acc_t* dst, const acc_t* val, int count) const {
    for (int v = 0; v < count; ++v) dst[v] += val[v];
  }
};

template <typename Body>
void for_each_point(const TriplaneShape& s, Body&& body) {
  at::parallel_for(0, s.batch * s.points, kPointGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i / s.points, i % s.points);
  });
}

// Plane gradients: one worker per (batch item, plane, channel chunk) walks the points in order,
// so the sum is race-free and bitwise reproducible.
// The worker also zero-fills its share of the gradient first (the buffer arrives
// uninitialised), so that share is still in cache when the walk adds to it; with `add` set it
// adds to the buffer's content instead.
template <typename T, typename Body>
void for_each_plane_in_point_order(const TriplaneShape& s, T* grad_planes, bool add, Body&& body) {
  const int64_t chunks = (s.channels + kCpuVec - 1) / kCpuVec;
  const int64_t texels = s.size[0] * s.size[1] * s.size[2];
  at::parallel_for(0, s.batch * 3 * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t np = task / chunks;
      const ChunkRange chunk{task % chunks, chunks};
      const int64_t c0 = chunk.first * kCpuVec;
      const int64_t width = std::min<int64_t>(kCpuVec, s.channels - c0);
      T* plane = grad_planes + np * texels * s.channels + c0;
      if (!add)
        for (int64_t t = 0; t < texels; ++t) std::fill_n(plane + t * s.channels, width, T(0));
      for (int64_t m = 0; m < s.points; ++m) body(np / 3, static_cast<int>(np % 3), m, chunk);
    }
  });
}

template <int DIMS, typename T>
void forward(const TriplaneShape& s, const TriplaneTensors& t) {
  auto planes = static_cast<const T*>(t.planes);
  auto coords = static_cast<const T*>(t.coords);
  auto out = static_cast<T*>(t.out);
  for_each_point(s, [&](int64_t n, int64_t m) {
    triplane_forward_point<DIMS, kCpuVec, T, T>(s, planes, coords, t.coord_strides, out, n, m,
                                                kAllChunks);
  });
}

template <int DIMS, typename T>
void backward(const TriplaneShape& s, const TriplaneTensors& t) {
  auto grad_out = static_cast<const T*>(t.grad_out);
  auto planes = static_cast<const T*>(t.planes);
  auto coords = static_cast<const T*>(t.coords);
  auto grad_coords = static_cast<T*>(t.grad_coords);
  auto grad_planes = static_cast<T*>(t.grad_planes);
  if (grad_planes == nullptr) {
    for_each_point(s, [&](int64_t n, int64_t m) {
      T* dst = grad_coords + (n * s.points + m) * 3;
      triplane_backward_point<DIMS, kCpuVec, T, T>(s, grad_out, t.grad_strides, planes, coords,
                                                   t.coord_strides, nullptr, true, dst, n, m, 0, 3,
                                                   kAllChunks, PlainAdd<T>());
    });
    return;
  }
  // One walk for both gradients: each (batch item, plane, chunk) worker also leaves its share of
  // every point's coordinate gradient in `partial`, summed per point afterwards.
  const int64_t slices = 3 * ((s.channels + kCpuVec - 1) / kCpuVec);
  const int64_t per_slice = s.batch * s.points * 3;
  std::vector<T> partial(grad_coords != nullptr ? slices * per_slice : 0);
  for_each_plane_in_point_order(
      s, grad_planes, t.add_to_grad_planes, [&](int64_t n, int p, int64_t m, ChunkRange chunk) {
        T unused[3];
        const int64_t slice = p * chunk.step + chunk.first;
        T* dst =
            grad_coords != nullptr ? &partial[slice * per_slice + (n * s.points + m) * 3] : unused;
        triplane_backward_point<DIMS, kCpuVec, T, T>(
            s, grad_out, t.grad_strides, planes, coords, t.coord_strides, grad_planes,
            grad_coords != nullptr, dst, n, m, p, p + 1, chunk, PlainAdd<T>());
      });
  if (grad_coords == nullptr) return;
  at::parallel_for(0, per_slice, 3 * kPointGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T sum = T(0);
      for (int64_t slice = 0; slice < slices; ++slice) sum += partial[slice * per_slice + i];
      grad_coords[i] = sum;
    }
  });
}

template <int DIMS, typename T>
void double_backward(const TriplaneShape& s, const TriplaneTensors& t) {
  auto grad_out = static_cast<const T*>(t.grad_out);
  auto planes = static_cast<const T*>(t.planes);
  auto coords = static_cast<const T*>(t.coords);
  auto gg_planes = static_cast<const T*>(t.gg_planes);
  auto gg_coords = static_cast<const T*>(t.gg_coords);
  auto grad_grad_out = static_cast<T*>(t.out);
  auto grad_coords = static_cast<T*>(t.grad_coords);
  auto grad_planes = static_cast<T*>(t.grad_planes);
  if (grad_grad_out != nullptr || grad_coords != nullptr) {
    for_each_point(s, [&](int64_t n, int64_t m) {
      T scratch[3];
      T* dst = grad_coords != nullptr ? grad_coords + (n * s.points + m) * 3 : scratch;
      triplane_double_backward_point<DIMS, kCpuVec, T, T>(
          s, grad_out, t.grad_strides, planes, coords, t.coord_strides, gg_planes, gg_coords,
          t.gg_coord_strides, grad_grad_out, nullptr, grad_coords != nullptr, dst, n, m, 0, 3,
          kAllChunks, PlainAdd<T>());
    });
  }
  if (grad_planes != nullptr && gg_coords != nullptr) {
    for_each_plane_in_point_order(
        s, grad_planes, false, [&](int64_t n, int p, int64_t m, ChunkRange chunk) {
          T unused[3];
          triplane_double_backward_point<DIMS, kCpuVec, T, T>(
              s, grad_out, t.grad_strides, planes, coords, t.coord_strides, nullptr, gg_coords,
              t.gg_coord_strides, nullptr, grad_planes, false, unused, n, m, p, p + 1, chunk,
              PlainAdd<T>());
        });
  }
}

template <int DIMS, typename T>
void row_keys(const TriplaneShape& s, const TriplaneTensors& t, int64_t* keys) {
  auto coords = static_cast<const T*>(t.coords);
  at::parallel_for(0, s.batch * 3 * s.points, kPointGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t np = i / s.points;
      keys[i] = row_sort_key<DIMS>(s, coords, t.coord_strides, np / 3, static_cast<int>(np % 3),
                                   i % s.points);
    }
  });
}

template <int DIMS, typename T>
void plane_grad_rows(const TriplaneShape& s, const TriplaneTensors& t) {
  at::parallel_for(0, s.batch * 3 * s.size[2] * s.size[1], 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      plane_grad_row<DIMS, kCpuVec, T, T>(s, t, row, kAllChunks);
  });
}

// float32 and float64 on the CPU; 16-bit storage is CUDA-only (checked by the glue first).
#define OMNIFAST_CPU_DISPATCH(FN, s, type, ...)                                 \
  do {                                                                          \
    TORCH_CHECK(type == StorageType::kFloat32 || type == StorageType::kFloat64, \
                "omnifast: the CPU tri-plane kernels take float32 or float64"); \
    const bool is_double = type == StorageType::kFloat64;                       \
    if (s.dims == 2) {                                                          \
      is_double ? FN<2, double>(s, __VA_ARGS__) : FN<2, float>(s, __VA_ARGS__); \
    } else {                                                                    \
      is_double ? FN<3, double>(s, __VA_ARGS__) : FN<3, float>(s, __VA_ARGS__); \
    }                                                                           \
  } while (0)

}  // namespace

void triplane_forward_cpu(const TriplaneShape& s, StorageType type, const TriplaneTensors& t) {
  OMNIFAST_CPU_DISPATCH(forward, s, type, t);
}

void triplane_backward_cpu(const TriplaneShape& s, StorageType type, const TriplaneTensors& t) {
  OMNIFAST_CPU_DISPATCH(backward, s, type, t);
}

void triplane_double_backward_cpu(const TriplaneShape& s, StorageType type,
                                  const TriplaneTensors& t) {
  OMNIFAST_CPU_DISPATCH(double_backward, s, type, t);
}

void triplane_row_keys_cpu(const TriplaneShape& s, StorageType type, const TriplaneTensors& t,
                           int64_t* keys) {
  OMNIFAST_CPU_DISPATCH(row_keys, s, type, t, keys);
}

void triplane_plane_grad_rows_cpu(const TriplaneShape& s, StorageType type,
                                  const TriplaneTensors& t) {
  OMNIFAST_CPU_DISPATCH(plane_grad_rows, s, type, t);
}

}  // namespace omnifast
