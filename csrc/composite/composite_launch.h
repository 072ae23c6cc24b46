// The boundary between the torch glue (composite_ops.cpp) and the backends. Plain C++.
#pragma once

#include "../common/storage_type.h"
#include "composite.h"

namespace omnifast {

// Pointers of one call, all contiguous. Features use the storage type, everything else the
// accumulation type (float for float32 and 16-bit features, double for float64).
struct CompositeTensors {
  const void* features = nullptr;  // [R, S, C]
  const void* field = nullptr;     // [R, S]
  const void* depths = nullptr;    // [R, S]
  const void* delta = nullptr;     // [R, S], optional
  const void* beta = nullptr;      // one value, optional (density fields)
  // forward outputs
  void* features_out = nullptr;       // [R, C]
  void* opacity = nullptr;            // [R]
  void* depth_raw = nullptr;          // [R]
  void* weights = nullptr;            // [R, L], optional
  void* log_transmittance = nullptr;  // [R] double: sum of log(1 - alpha + 1e-10), for the backward
  // backward: upstream gradients, then the gradients written
  const void* grad_features_out = nullptr;  // [R, C]
  const void* grad_opacity = nullptr;       // [R]
  const void* grad_depth_raw = nullptr;     // [R]
  const void* grad_weights = nullptr;       // [R, L], optional
  void* grad_features = nullptr;            // [R, S, C]
  void* grad_field = nullptr;               // [R, S]
  void* grad_depths = nullptr;              // [R, S]
  void* grad_delta = nullptr;               // [R, S], optional
  void* grad_beta = nullptr;                // [R] per-ray partials
};

void composite_forward_cpu(const CompositeShape& s, StorageType type, const CompositeTensors& t);
void composite_backward_cpu(const CompositeShape& s, StorageType type, const CompositeTensors& t);

// Importance sampling and merging (depths and uniforms in the accumulation type; one ray per
// worker). `u` is sorted per ray; `out` gets sorted depths [R, n]; `order` [R, S + n].
void importance_sample_cpu(const SamplingShape& s, bool is_double, const void* depths,
                           const void* weights, const void* u, void* out);
void merge_order_cpu(int64_t rays, int64_t coarse, int64_t fine, bool is_double,
                     const void* coarse_depths, const void* fine_depths, int64_t* order);
const char* importance_sample_cuda(const SamplingShape& s, bool is_double, const void* depths,
                                   const void* weights, const void* u, void* out, void* stream);
const char* merge_order_cuda(int64_t rays, int64_t coarse, int64_t fine, bool is_double,
                             const void* coarse_depths, const void* fine_depths, int64_t* order,
                             void* stream);

// On the given cudaStream_t; nullptr on success, else the CUDA error string. One group of lanes
// per ray, each lane a slice of the channels: no atomics, bitwise reproducible.
const char* composite_forward_cuda(const CompositeShape& s, StorageType type,
                                   const CompositeTensors& t, void* stream);
const char* composite_backward_cuda(const CompositeShape& s, StorageType type,
                                    const CompositeTensors& t, void* stream);

// The typed views both backends build from a CompositeTensors.
// beta is read once here (1 when absent: fields that are densities already).
template <typename scalar_t, typename acc_t>
OMNIFAST_HD CompositeInputs<scalar_t, acc_t> composite_inputs(const CompositeTensors& t) {
  return {static_cast<const scalar_t*>(t.features), static_cast<const acc_t*>(t.field),
          static_cast<const acc_t*>(t.depths), static_cast<const acc_t*>(t.delta),
          t.beta != nullptr ? *static_cast<const acc_t*>(t.beta) : acc_t(1)};
}

template <typename acc_t>
OMNIFAST_HD CompositeGrads<acc_t> composite_grads(const CompositeTensors& t) {
  return {static_cast<const acc_t*>(t.grad_features_out), static_cast<const acc_t*>(t.grad_opacity),
          static_cast<const acc_t*>(t.grad_depth_raw), static_cast<const acc_t*>(t.grad_weights)};
}

template <typename acc_t>
OMNIFAST_HD CompositeGradOutputs<acc_t> composite_grad_outputs(const CompositeTensors& t) {
  return {static_cast<acc_t*>(t.grad_features), static_cast<acc_t*>(t.grad_field),
          static_cast<acc_t*>(t.grad_depths), static_cast<acc_t*>(t.grad_delta),
          static_cast<acc_t*>(t.grad_beta)};
}

}  // namespace omnifast
