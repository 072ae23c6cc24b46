// The boundary between the torch glue (triplane_ops.cpp) and the backends. Plain C++: the CUDA
// side is compiled by nvcc without ATen, the CPU side by the host compiler.
#pragma once

#include "../common/storage_type.h"
#include "triplane.h"

namespace omnifast {

// Pointers of one call. Plane-shaped tensors are feature-last and contiguous; "acc" tensors use
// the accumulation type (float for float32/16-bit storage, double for float64).
struct TriplaneTensors {
  const void* planes = nullptr;  // storage type
  const void* coords = nullptr;  // acc type, strided
  CoordStrides coord_strides{};
  const void* grad_out = nullptr;  // storage type, unit channel stride (backward passes)
  PointStrides grad_strides{};
  const void* gg_planes = nullptr;  // storage type, optional (double backward)
  const void* gg_coords = nullptr;  // acc type, strided, optional (double backward)
  CoordStrides gg_coord_strides{};
  void* out = nullptr;          // storage type, contiguous: forward output or grad of grad_out
  void* grad_planes = nullptr;  // acc type, zero-filled (CPU: any content), optional
  // The backward adds to grad_planes as it is (CPU: its workers zero their shares first unless
  // set; the CUDA kernels always add).
  bool add_to_grad_planes = false;
  void* grad_coords = nullptr;  // acc type, contiguous [N, M, 3], optional
  // The row walk (plane gradients in a fixed order): flat (n * 3 + p) * M + m indices sorted
  // stably by row_sort_key, and the first position of each key (one more entry than keys).
  const int64_t* row_order = nullptr;
  const int64_t* row_key_start = nullptr;
};

// One gradient row of the row walk (triplane.h), for this worker's channel chunks: the
// backward's plane gradient, or with gg_coords set the double backward's plane term. The same
// code for the CPU loops and the CUDA kernel.
template <int DIMS, int VEC, typename scalar_t, typename acc_t>
OMNIFAST_HD void plane_grad_row(const TriplaneShape& s, const TriplaneTensors& t, int64_t row,
                                ChunkRange chunks) {
  const auto grad_out = static_cast<const scalar_t*>(t.grad_out);
  const auto planes = static_cast<const scalar_t*>(t.planes);
  const auto coords = static_cast<const acc_t*>(t.coords);
  const auto gg_coords = static_cast<const acc_t*>(t.gg_coords);
  const auto grad_planes = static_cast<acc_t*>(t.grad_planes);
  walk_row<DIMS, VEC>(s, row, t.row_order, t.row_key_start, grad_planes,
                      [&](int64_t n, int p, int64_t m, const RowAdd<VEC, acc_t>& add) {
                        acc_t unused[3];
                        if (gg_coords == nullptr)
                          triplane_backward_point<DIMS, VEC, scalar_t, acc_t>(
                              s, grad_out, t.grad_strides, planes, coords, t.coord_strides,
                              grad_planes, false, unused, n, m, p, p + 1, chunks, add);
                        else
                          triplane_double_backward_point<DIMS, VEC, scalar_t, acc_t>(
                              s, grad_out, t.grad_strides, planes, coords, t.coord_strides, nullptr,
                              gg_coords, t.gg_coord_strides, nullptr, grad_planes, false, unused, n,
                              m, p, p + 1, chunks, add);
                      });
}

// CPU twins (triplane_cpu.cpp). Deterministic: plane gradients are accumulated by one worker
// per (batch item, plane), in point order.
void triplane_forward_cpu(const TriplaneShape& s, StorageType type, const TriplaneTensors& t);
void triplane_backward_cpu(const TriplaneShape& s, StorageType type, const TriplaneTensors& t);
void triplane_double_backward_cpu(const TriplaneShape& s, StorageType type,
                                  const TriplaneTensors& t);
// The row walk: keys[(n * 3 + p) * M + m] = row_sort_key; then grad_planes (zero-filled) from
// grad_out alone (the backward's plane gradient) or, when gg_coords is set, the double
// backward's plane term. Bitwise reproducible on both backends.
void triplane_row_keys_cpu(const TriplaneShape& s, StorageType type, const TriplaneTensors& t,
                           int64_t* keys);
void triplane_plane_grad_rows_cpu(const TriplaneShape& s, StorageType type,
                                  const TriplaneTensors& t);

// CUDA launchers (triplane_cuda.cu) on the given cudaStream_t. They return nullptr on success or
// the CUDA error string of a failed launch. The backward kernels accumulate plane gradients with
// atomics, so their summation order (and last bits) can change from run to run; the row walk
// below is the deterministic alternative.
const char* triplane_forward_cuda(const TriplaneShape& s, StorageType type,
                                  const TriplaneTensors& t, void* stream);
const char* triplane_backward_cuda(const TriplaneShape& s, StorageType type,
                                   const TriplaneTensors& t, void* stream);
const char* triplane_double_backward_cuda(const TriplaneShape& s, StorageType type,
                                          const TriplaneTensors& t, void* stream);
const char* triplane_row_keys_cuda(const TriplaneShape& s, StorageType type,
                                   const TriplaneTensors& t, int64_t* keys, void* stream);
const char* triplane_plane_grad_rows_cuda(const TriplaneShape& s, StorageType type,
                                          const TriplaneTensors& t, void* stream);

}  // namespace omnifast
