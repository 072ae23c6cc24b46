// The boundary between the torch glue (softplus_ops.cpp) and the backends. Plain C++.
#pragma once

#include <cstdint>

namespace omnifast {

// out[i] = softplus(x[i]) over n contiguous elements (float64 if is_double, else float32).
void softplus_cpu(int64_t n, bool is_double, const void* x, void* out, double beta,
                  double threshold);
// On the given cudaStream_t; nullptr on success, else the CUDA error string.
const char* softplus_cuda(int64_t n, bool is_double, const void* x, void* out, double beta,
                          double threshold, void* stream);

}  // namespace omnifast
