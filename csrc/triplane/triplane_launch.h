// The boundary between the torch glue (triplane_ops.cpp) and the backends. Plain C++: the CUDA
// side is compiled by nvcc without ATen, the CPU side by the host compiler.
#pragma once

#include "triplane.h"

namespace omnifast {

enum class StorageType : int { kFloat32, kFloat64, kFloat16, kBFloat16 };

// Pointers of one call. Plane-shaped tensors are feature-last and contiguous; "acc" tensors use
// the accumulation type (float for float32/16-bit storage, double for float64).
struct TriplaneTensors {
  const void* planes = nullptr;       // storage type
  const void* coords = nullptr;       // acc type, strided
  CoordStrides coord_strides{};
  const void* grad_out = nullptr;     // storage type, unit channel stride (backward passes)
  PointStrides grad_strides{};
  const void* gg_planes = nullptr;    // storage type, optional (double backward)
  const void* gg_coords = nullptr;    // acc type, strided, optional (double backward)
  CoordStrides gg_coord_strides{};
  void* out = nullptr;                // storage type, contiguous: forward output or grad of grad_out
  void* grad_planes = nullptr;        // acc type, zero-filled, optional
  void* grad_coords = nullptr;        // acc type, contiguous [N, M, 3], optional
};

// CPU twins (triplane_cpu.cpp). Deterministic: plane gradients are accumulated by one worker
// per (batch item, plane), in point order.
void triplane_forward_cpu(const TriplaneShape& s, StorageType type, const TriplaneTensors& t);
void triplane_backward_cpu(const TriplaneShape& s, StorageType type, const TriplaneTensors& t);
void triplane_double_backward_cpu(const TriplaneShape& s, StorageType type,
                                  const TriplaneTensors& t);

// CUDA launchers (triplane_cuda.cu) on the given cudaStream_t. They return nullptr on success or
// the CUDA error string of a failed launch. Plane gradients are accumulated with atomics, so
// their summation order (and last bits) can change from run to run.
const char* triplane_forward_cuda(const TriplaneShape& s, StorageType type,
                                  const TriplaneTensors& t, void* stream);
const char* triplane_backward_cuda(const TriplaneShape& s, StorageType type,
                                   const TriplaneTensors& t, void* stream);
const char* triplane_double_backward_cuda(const TriplaneShape& s, StorageType type,
                                          const TriplaneTensors& t, void* stream);

}  // namespace omnifast
