// CPU loops over the shared softplus math (softplus.h). float32 (what networks run) takes the
// vectorisable exp and log1p (common/vector_math.h) in two passes over blocks that stay in L1:
// the tails, then the rest (one loop calling both functions is not vectorised by GCC). float64
// runs the math as CUDA does, so that the tight float64 tests check that very code.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../common/vector_math.h"
#include "softplus.h"
#include "softplus_launch.h"

namespace omnifast {
namespace {

constexpr int64_t kBlock = 1024;
constexpr int64_t kGrain = 32768;

OMNIFAST_VECTOR_CLONES void tails(int64_t n, const float* __restrict x, float beta,
                                  float* __restrict tail) {
  for (int64_t i = 0; i < n; ++i) tail[i] = softplus_tail<VectorMath>(x[i], beta);
}

OMNIFAST_VECTOR_CLONES void finish(int64_t n, const float* __restrict x,
                                   const float* __restrict tail, float beta, float threshold,
                                   float* __restrict out) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = softplus_from_tail<VectorMath>(x[i], tail[i], beta, threshold);
}

void softplus_float(int64_t n, const float* x, float* out, float beta, float threshold) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    float tail[kBlock];
    for (int64_t start = begin; start < end; start += kBlock) {
      const int64_t count = std::min(kBlock, end - start);
      tails(count, x + start, beta, tail);
      finish(count, x + start, tail, beta, threshold, out + start);
    }
  });
}

void softplus_double(int64_t n, const double* x, double* out, double beta, double threshold) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = softplus_of<StandardMath>(x[i], beta, threshold);
  });
}

}  // namespace

void softplus_cpu(int64_t n, bool is_double, const void* x, void* out, double beta,
                  double threshold) {
  if (is_double)
    softplus_double(n, static_cast<const double*>(x), static_cast<double*>(out), beta, threshold);
  else
    softplus_float(n, static_cast<const float*>(x), static_cast<float*>(out),
                   static_cast<float>(beta), static_cast<float>(threshold));
}

}  // namespace omnifast
