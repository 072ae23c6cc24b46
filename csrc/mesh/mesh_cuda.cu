// CUDA kernels over the shared mesh math (mesh.h). CUDA runtime and project headers only. The
// tree is the linear BVH: Morton keys (sorted by the glue), one thread per internal node for the
// radix tree, one per leaf for the bottom-up bounds pass; one thread per query point.
#include <cuda_runtime.h>

#include <cstdint>
#include <cuda/atomic>

#include "../common/cuda_launch.cuh"
#include "mesh_launch.h"

namespace omnifast {
namespace {

template <typename T>
__global__ void face_normals_kernel(MeshDims d, const T* verts, MeshTopology topo, T* face) {
  OMNIFAST_THREAD_LOOP(i, d.batch * d.faces) face_normal_item(d, verts, topo, face, i);
}

template <typename T>
__global__ void vertex_normals_kernel(MeshDims d, const T* verts, MeshTopology topo, const T* face,
                                      T* vertex) {
  OMNIFAST_THREAD_LOOP(i, d.batch * d.verts) vertex_normal_item(d, verts, topo, face, vertex, i);
}

template <typename T>
__global__ void edge_normals_kernel(MeshDims d, MeshTopology topo, const T* face, T* edge) {
  OMNIFAST_THREAD_LOOP(i, d.batch * d.edges) edge_normal_item(d, topo, face, edge, i);
}

// One block per mesh: the box of the triangle centroids, then every triangle's key.
template <typename T>
__global__ void morton_keys_kernel(MeshDims d, const T* verts, MeshTopology topo, int64_t* keys) {
  __shared__ T lo[3][kThreads], hi[3][kThreads];
  __shared__ T bounds[6];
  const int64_t b = blockIdx.x;
  for (int a = 0; a < 3; ++a) {
    lo[a][threadIdx.x] = infinity_of<T>();
    hi[a][threadIdx.x] = -infinity_of<T>();
  }
  for (int64_t f = threadIdx.x; f < d.faces; f += blockDim.x) {
    const Vec3<T> c = triangle_centroid(d, verts, topo, b, f);
    const T xyz[3] = {c.x, c.y, c.z};
    for (int a = 0; a < 3; ++a) {
      lo[a][threadIdx.x] = min_of(lo[a][threadIdx.x], xyz[a]);
      hi[a][threadIdx.x] = max_of(hi[a][threadIdx.x], xyz[a]);
    }
  }
  __syncthreads();
  for (unsigned stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride)
      for (int a = 0; a < 3; ++a) {
        lo[a][threadIdx.x] = min_of(lo[a][threadIdx.x], lo[a][threadIdx.x + stride]);
        hi[a][threadIdx.x] = max_of(hi[a][threadIdx.x], hi[a][threadIdx.x + stride]);
      }
    __syncthreads();
  }
  if (threadIdx.x < 3) {
    bounds[threadIdx.x] = lo[threadIdx.x][0];
    bounds[3 + threadIdx.x] = hi[threadIdx.x][0];
  }
  __syncthreads();
  for (int64_t f = threadIdx.x; f < d.faces; f += blockDim.x)
    keys[b * d.faces + f] = triangle_key(d, verts, topo, bounds, b, f);
}

__global__ void lbvh_links_kernel(MeshDims d, const int64_t* sorted_keys, BvhArrays bvh,
                                  int64_t internal) {
  OMNIFAST_THREAD_LOOP(i, d.batch * internal) {
    const int64_t b = i / internal;
    lbvh_node_item(d, sorted_keys, bvh, b, i - b * internal);
  }
}

template <typename T>
__global__ void gather_kernel(MeshDims d, const T* verts, MeshTopology topo, BvhArrays bvh) {
  OMNIFAST_THREAD_LOOP(i, d.batch * d.faces) {
    const int64_t b = i / d.faces;
    gather_triangle(d, verts, topo, bvh, b, i - b * d.faces);
  }
}

// The bounds pass: a thread per leaf climbs while it is the second to arrive at a node. The
// arrival is an acquire-release add: it publishes the slot this thread wrote (release) and, for
// the second to arrive, orders its reads of the sibling's slot after the first's writes
// (acquire); those reads also go past L1.
template <typename T>
__global__ void bounds_kernel(MeshDims d, BvhArrays bvh, int32_t* counters) {
  OMNIFAST_THREAD_LOOP(i, d.batch * d.faces) {
    const int64_t b = i / d.faces, leaf = i - b * d.faces;
    if (leaf >= bvh.counts[2 * b + 1]) continue;
    bounds_item<T>(d, bvh, counters, b, leaf, [](int32_t* counter) {
      return cuda::atomic_ref<int32_t, cuda::thread_scope_device>(*counter).fetch_add(
          1, cuda::memory_order_acq_rel);
    });
  }
}

template <typename T>
__global__ void closest_point_kernel(MeshDims d, MeshTopology topo, BvhArrays bvh,
                                     NormalArrays normals, int sign_mode, QueryArrays q) {
  OMNIFAST_THREAD_LOOP(i, d.batch * q.per_mesh)
  closest_point_item<T>(d, topo, bvh, normals, sign_mode, q, i);
}

template <typename T>
const char* normals_typed(const MeshDims& d, const T* verts, const MeshTopology& topo,
                          const NormalArrays& out, cudaStream_t stream) {
  T* face = static_cast<T*>(out.face);
  return launched([&] {
    if (d.batch * d.faces > 0) {
      OMNIFAST_LAUNCH(grid_for(d.batch * d.faces), kThreads, stream, face_normals_kernel<T>)
      (d, verts, topo, face);
    }
    if (d.batch * d.verts > 0) {
      OMNIFAST_LAUNCH(grid_for(d.batch * d.verts), kThreads, stream, vertex_normals_kernel<T>)
      (d, verts, topo, face, static_cast<T*>(out.vertex));
    }
    if (d.batch * d.edges > 0) {
      OMNIFAST_LAUNCH(grid_for(d.batch * d.edges), kThreads, stream, edge_normals_kernel<T>)
      (d, topo, face, static_cast<T*>(out.edge));
    }
  });
}

template <typename T>
const char* refit_typed(const MeshDims& d, const T* verts, const MeshTopology& topo,
                        const BvhArrays& bvh, int32_t* counters, cudaStream_t stream) {
  const int64_t items = d.batch * d.faces;
  if (items == 0) return nullptr;
  return launched([&] {
    OMNIFAST_LAUNCH(grid_for(items), kThreads, stream, gather_kernel<T>)(d, verts, topo, bvh);
    OMNIFAST_LAUNCH(grid_for(items), kThreads, stream, bounds_kernel<T>)(d, bvh, counters);
  });
}

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace

const char* mesh_normals_cuda(const MeshDims& d, bool is_double, const void* verts,
                              const MeshTopology& topo, const NormalArrays& out, void* stream) {
  return is_double
             ? normals_typed(d, static_cast<const double*>(verts), topo, out, as_stream(stream))
             : normals_typed(d, static_cast<const float*>(verts), topo, out, as_stream(stream));
}

const char* mesh_morton_keys_cuda(const MeshDims& d, bool is_double, const void* verts,
                                  const MeshTopology& topo, int64_t* keys, void* stream) {
  if (d.batch == 0) return nullptr;
  return launched([&] {
    if (is_double) {
      OMNIFAST_LAUNCH(d.batch, kThreads, as_stream(stream), morton_keys_kernel<double>)
      (d, static_cast<const double*>(verts), topo, keys);
    } else {
      OMNIFAST_LAUNCH(d.batch, kThreads, as_stream(stream), morton_keys_kernel<float>)
      (d, static_cast<const float*>(verts), topo, keys);
    }
  });
}

const char* mesh_lbvh_links_cuda(const MeshDims& d, const int64_t* sorted_keys,
                                 const BvhArrays& bvh, void* stream) {
  const int64_t internal = lbvh_internal(lbvh_leaves(d.faces));
  if (d.batch == 0) return nullptr;
  return launched([&] {
    OMNIFAST_LAUNCH(grid_for(d.batch * internal), kThreads, as_stream(stream), lbvh_links_kernel)
    (d, sorted_keys, bvh, internal);
  });
}

const char* mesh_refit_cuda(const MeshDims& d, bool is_double, const void* verts,
                            const MeshTopology& topo, const BvhArrays& bvh, int32_t* counters,
                            void* stream) {
  return is_double ? refit_typed(d, static_cast<const double*>(verts), topo, bvh, counters,
                                 as_stream(stream))
                   : refit_typed(d, static_cast<const float*>(verts), topo, bvh, counters,
                                 as_stream(stream));
}

const char* mesh_closest_point_cuda(const MeshDims& d, bool is_double, const MeshTopology& topo,
                                    const BvhArrays& bvh, const NormalArrays& normals,
                                    int sign_mode, const QueryArrays& q, void* stream) {
  const int64_t total = d.batch * q.per_mesh;
  if (total == 0) return nullptr;
  return launched([&] {
    if (is_double) {
      OMNIFAST_LAUNCH(grid_for(total), kThreads, as_stream(stream), closest_point_kernel<double>)
      (d, topo, bvh, normals, sign_mode, q);
    } else {
      OMNIFAST_LAUNCH(grid_for(total), kThreads, as_stream(stream), closest_point_kernel<float>)
      (d, topo, bvh, normals, sign_mode, q);
    }
  });
}

}  // namespace omnifast
