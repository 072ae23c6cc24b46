// CUDA kernels over the shared mesh math (mesh.h). CUDA runtime and project headers only. The
// tree is the linear BVH: Morton keys (sorted by the glue), one thread per internal node for the
// radix tree, one per leaf for the bottom-up bounds pass; one thread per query point.
#include <cuda_runtime.h>

#include <cstdint>

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
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
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
// fence publishes its slot before the arrival is counted; the winner reads slots past L1.
template <typename T>
__global__ void bounds_kernel(MeshDims d, BvhArrays bvh, int32_t* counters) {
  OMNIFAST_THREAD_LOOP(i, d.batch * d.faces) {
    const int64_t b = i / d.faces, leaf = i - b * d.faces;
    if (leaf >= bvh.counts[2 * b + 1]) continue;
    bounds_item<T>(d, bvh, counters, b, leaf, [](int32_t* counter) {
      __threadfence();
      return atomicAdd(counter, 1);
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
  if (d.batch * d.faces > 0)
    face_normals_kernel<T>
        <<<grid_for(d.batch * d.faces), kThreads, 0, stream>>>(d, verts, topo, face);
  if (d.batch * d.verts > 0)
    vertex_normals_kernel<T><<<grid_for(d.batch * d.verts), kThreads, 0, stream>>>(
        d, verts, topo, face, static_cast<T*>(out.vertex));
  if (d.batch * d.edges > 0)
    edge_normals_kernel<T><<<grid_for(d.batch * d.edges), kThreads, 0, stream>>>(
        d, topo, face, static_cast<T*>(out.edge));
  return last_error();
}

template <typename T>
const char* refit_typed(const MeshDims& d, const T* verts, const MeshTopology& topo,
                        const BvhArrays& bvh, int32_t* counters, cudaStream_t stream) {
  const int64_t items = d.batch * d.faces;
  if (items == 0) return nullptr;
  gather_kernel<T><<<grid_for(items), kThreads, 0, stream>>>(d, verts, topo, bvh);
  bounds_kernel<T><<<grid_for(items), kThreads, 0, stream>>>(d, bvh, counters);
  return last_error();
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
  if (is_double)
    morton_keys_kernel<double><<<d.batch, kThreads, 0, as_stream(stream)>>>(
        d, static_cast<const double*>(verts), topo, keys);
  else
    morton_keys_kernel<float><<<d.batch, kThreads, 0, as_stream(stream)>>>(
        d, static_cast<const float*>(verts), topo, keys);
  return last_error();
}

const char* mesh_lbvh_links_cuda(const MeshDims& d, const int64_t* sorted_keys,
                                 const BvhArrays& bvh, void* stream) {
  const int64_t internal = lbvh_internal(lbvh_leaves(d.faces));
  if (d.batch == 0) return nullptr;
  lbvh_links_kernel<<<grid_for(d.batch * internal), kThreads, 0, as_stream(stream)>>>(
      d, sorted_keys, bvh, internal);
  return last_error();
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
  if (is_double)
    closest_point_kernel<double>
        <<<grid_for(total), kThreads, 0, as_stream(stream)>>>(d, topo, bvh, normals, sign_mode, q);
  else
    closest_point_kernel<float>
        <<<grid_for(total), kThreads, 0, as_stream(stream)>>>(d, topo, bvh, normals, sign_mode, q);
  return last_error();
}

}  // namespace omnifast
