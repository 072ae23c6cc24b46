// CPU loops over the shared bias_act math (bias_act.h): one worker per range of rows (an image's
// channel), each row one vectorised loop with the channel's bias.
#include <ATen/Parallel.h>

#include "bias_act_launch.h"

namespace omnifast {
namespace {

constexpr int64_t kGrainElements = 32768;

int64_t row_grain(int64_t inner) { return inner >= kGrainElements ? 1 : kGrainElements / inner; }

template <typename T>
OMNIFAST_VECTOR_CLONES void value_row(int64_t n, const T* __restrict x, T bias, BiasActSlopes<T> s,
                                      T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = bias_act_value(x[i], bias, s);
}

template <typename T>
OMNIFAST_VECTOR_CLONES void grad_row(int64_t n, const T* __restrict grad, const T* __restrict y,
                                     BiasActSlopes<T> s, T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = bias_act_gradient(grad[i], y[i], s);
}

// fn(r) for every row r = (image, channel), rows split over the workers.
template <typename F>
void each_row(const BiasActShape& shape, F&& fn) {
  const int64_t rows = shape.inner == 0 ? 0 : shape.numel / shape.inner;
  at::parallel_for(0, rows, row_grain(shape.inner), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

template <typename T>
void values(const BiasActShape& shape, const T* x, const T* bias, T* out) {
  const BiasActSlopes<T> s = slopes_of<T>(shape);
  const int64_t n = shape.inner;
  each_row(shape, [&](int64_t r) {
    value_row(n, x + r * n, bias ? bias[r % shape.channels] : T(0), s, out + r * n);
  });
}

template <typename T>
void grads(const BiasActShape& shape, const T* grad, const T* y, T* out) {
  const BiasActSlopes<T> s = slopes_of<T>(shape);
  const int64_t n = shape.inner;
  each_row(shape, [&](int64_t r) { grad_row(n, grad + r * n, y + r * n, s, out + r * n); });
}

}  // namespace

void bias_act_cpu(const BiasActShape& s, bool is_double, const void* x, const void* bias,
                  void* out) {
  if (is_double)
    values(s, static_cast<const double*>(x), static_cast<const double*>(bias),
           static_cast<double*>(out));
  else
    values(s, static_cast<const float*>(x), static_cast<const float*>(bias),
           static_cast<float*>(out));
}

void bias_act_grad_cpu(const BiasActShape& s, bool is_double, const void* grad, const void* y,
                       void* out) {
  if (is_double)
    grads(s, static_cast<const double*>(grad), static_cast<const double*>(y),
          static_cast<double*>(out));
  else
    grads(s, static_cast<const float*>(grad), static_cast<const float*>(y),
          static_cast<float*>(out));
}

}  // namespace omnifast
