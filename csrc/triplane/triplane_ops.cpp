// Torch glue of the tri-plane sampler: checks, layout conversion, allocation, and the hand-off
// to the CPU loops or the CUDA launchers. Registered for both dispatch keys.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "../common/checks.h"
#include "../common/dispatch.h"
#include "../common/host_memory.h"
#include "triplane_launch.h"

namespace omnifast {
namespace {

constexpr const char* kOp = "triplane_sample";

struct Prepared {
  TriplaneShape shape;
  StorageType type;
  at::ScalarType acc_type;
  at::Tensor planes;  // contiguous [N, 3, (D,) H, W, C]
  at::Tensor coords;  // accumulation type
};

// `planes` may be a stand-in of their shape and dtype (read_planes false: the pass reads no
// plane values).
Prepared prepare(const at::Tensor& planes, const at::Tensor& coords, at::IntArrayRef axes,
                 at::ArrayRef<double> scale, int64_t reduce, bool read_planes = true) {
  check_defined(kOp, "planes", planes);
  check_defined(kOp, "coords", coords);
  OMNIFAST_CHECK_ARG(planes.dim() == 5 || planes.dim() == 6, kOp, "planes",
                     "feature-last [N, 3, H, W, C] or [N, 3, D, H, W, C]", shape_of(planes));
  OMNIFAST_CHECK_ARG(planes.size(1) == 3, kOp, "planes",
                     "three planes in dim 1 ([N, 3, H, W, C] or [N, 3, D, H, W, C])",
                     shape_of(planes));
  const auto dtype = planes.scalar_type();
  OMNIFAST_CHECK_ARG(dtype == at::kFloat || dtype == at::kDouble || is_16bit(dtype), kOp, "planes",
                     "float32, float64, float16 or bfloat16", dtype);
  OMNIFAST_CHECK_ARG(!is_16bit(dtype) || runs_cuda_kernels(planes), kOp, "planes",
                     "float32 or float64 on the CPU (16-bit planes are CUDA-only)", dtype);
  OMNIFAST_CHECK_ARG(planes.is_cpu() || planes.is_cuda(), kOp, "planes", "on a CPU or CUDA device",
                     planes.device().str());
  check_same_device(kOp, "coords", coords, "planes", planes);
  const int64_t N = planes.size(0);
  OMNIFAST_CHECK_ARG(coords.dim() == 3 && coords.size(0) == N && coords.size(2) == 3, kOp, "coords",
                     "[N, M, 3] with N = " + std::to_string(N) + " (from planes)",
                     shape_of(coords));
  const at::ScalarType acc_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  if (is_16bit(dtype)) {
    OMNIFAST_CHECK_ARG(coords.scalar_type() == at::kFloat || coords.scalar_type() == dtype, kOp,
                       "coords", "float32 or the dtype of planes", coords.scalar_type());
  } else {
    OMNIFAST_CHECK_ARG(coords.scalar_type() == dtype, kOp, "coords",
                       std::string("of the dtype of planes (") + c10::toString(dtype) + ")",
                       coords.scalar_type());
  }
  const int dims = static_cast<int>(planes.dim()) - 3;
  OMNIFAST_CHECK_ARG(static_cast<int64_t>(axes.size()) == 3 * dims, kOp, "axes",
                     std::to_string(3 * dims) + " coordinate indices (3 planes x " +
                         std::to_string(dims) + " grid axes)",
                     axes.size());
  OMNIFAST_CHECK_ARG(scale.size() == 3, kOp, "scale", "3 factors", scale.size());
  for (double f : scale)
    OMNIFAST_CHECK_ARG(std::isfinite(f) && f != 0.0, kOp, "scale (2 / box_warp)",
                       "finite and non-zero", f);
  OMNIFAST_CHECK_ARG(reduce >= kReduceNone && reduce <= kReduceMean, kOp, "reduce",
                     "0 (none), 1 (sum) or 2 (mean)", reduce);

  Prepared p;
  TriplaneShape& s = p.shape;
  s.batch = N;
  s.points = coords.size(1);
  s.channels = planes.size(-1);
  s.size[0] = planes.size(-2);
  s.size[1] = planes.size(-3);
  s.size[2] = dims == 3 ? planes.size(2) : 1;
  for (int a = 0; a < dims; ++a)
    OMNIFAST_CHECK_ARG(s.size[a] > 0, kOp, "planes", "non-empty spatial sizes", shape_of(planes));
  s.dims = dims;
  for (int plane = 0; plane < 3; ++plane) {
    for (int a = 0; a < 3; ++a) s.axes[plane][a] = 0;
    for (int a = 0; a < dims; ++a) {
      const int64_t comp = axes[plane * dims + a];
      OMNIFAST_CHECK_ARG(comp >= 0 && comp <= 2, kOp, "axes", "coordinate indices in 0..2", comp);
      for (int b = 0; b < a; ++b)
        OMNIFAST_CHECK_ARG(s.axes[plane][b] != comp, kOp, "axes",
                           "distinct coordinates within each plane", axes);
      s.axes[plane][a] = static_cast<int>(comp);
    }
  }
  for (int k = 0; k < 3; ++k) s.scale[k] = scale[k];
  s.reduce = static_cast<int>(reduce);
  p.type = storage_type_of(dtype);
  p.acc_type = acc_type;
  p.planes = read_planes ? planes.contiguous() : planes;
  p.coords = coords.to(acc_type);
  return p;
}

CoordStrides coord_strides(const at::Tensor& c) {
  return CoordStrides{c.stride(0), c.stride(1), c.stride(2)};
}

std::vector<int64_t> output_shape(const TriplaneShape& s) {
  if (s.reduce == kReduceNone) return {s.batch, 3, s.points, s.channels};
  return {s.batch, s.points, s.channels};
}

// Checks grad_out against the forward's output; returns it with unit channel stride (a copy
// only for layouts such as an expanded scalar gradient).
at::Tensor checked_grad_out(const Prepared& p, const at::Tensor& planes,
                            const at::Tensor& grad_out) {
  check_defined(kOp, "grad_out", grad_out);
  check_same_device(kOp, "grad_out", grad_out, "planes", planes);
  check_shape(kOp, "grad_out", grad_out, output_shape(p.shape));
  OMNIFAST_CHECK_ARG(grad_out.scalar_type() == planes.scalar_type(), kOp, "grad_out",
                     "of the dtype of planes", grad_out.scalar_type());
  return grad_out.stride(-1) == 1 ? grad_out : grad_out.contiguous();
}

// grad_out's strides as [N, 3, M, C] (plane stride 0 for a reduced output, read by every plane).
PointStrides grad_strides(const Prepared& p, const at::Tensor& g) {
  if (p.shape.reduce == kReduceNone) return {g.stride(0), g.stride(1), g.stride(2)};
  return {g.stride(0), 0, g.stride(1)};
}

// A zero plane gradient in the accumulation type.
at::Tensor zero_plane_grad(const Prepared& p) {
  return at::zeros(p.planes.sizes(), p.planes.options().dtype(p.acc_type));
}

// The buffer the backward kernels accumulate into: the CUDA kernels add into zeros; the CPU
// workers zero their own shares just before adding to them.
at::Tensor plane_grad_buffer(const Prepared& p) {
  return !runs_cuda_kernels(p.planes)
             ? empty_output(p.planes.sizes(), p.planes.options().dtype(p.acc_type))
             : zero_plane_grad(p);
}

// The pointers every pass reads: planes and coordinates, and for the backward passes grad_out.
TriplaneTensors inputs_of(const Prepared& p, const at::Tensor& grad = at::Tensor()) {
  TriplaneTensors t;
  t.planes = p.planes.data_ptr();
  t.coords = p.coords.data_ptr();
  t.coord_strides = coord_strides(p.coords);
  if (grad.defined()) {
    t.grad_out = grad.data_ptr();
    t.grad_strides = grad_strides(p, grad);
  }
  return t;
}

// The double backward's coordinate cotangent, checked and handed to the kernels (undefined when
// absent; the tensor must outlive the launch).
at::Tensor attach_grad_grad_coords(const Prepared& p, const at::Tensor& coords,
                                   const std::optional<at::Tensor>& grad_grad_coords,
                                   TriplaneTensors& t) {
  if (!grad_grad_coords.has_value() || !grad_grad_coords->defined()) return at::Tensor();
  check_same_device(kOp, "grad_grad_coords", *grad_grad_coords, "planes", p.planes);
  check_shape(kOp, "grad_grad_coords", *grad_grad_coords, coords.sizes());
  at::Tensor gg_coords = grad_grad_coords->to(p.acc_type);
  t.gg_coords = gg_coords.data_ptr();
  t.gg_coord_strides = coord_strides(gg_coords);
  return gg_coords;
}

at::Tensor nothing(const at::Tensor& like) { return at::empty({0}, like.options()); }

// The plane gradient through the row walk (triplane.h): keys, a stable sort, one worker per
// gradient row. Bitwise reproducible; CUDA uses it under torch.use_deterministic_algorithms,
// where its atomics would not be.
// With `into` defined the walk adds to it (the accumulation type, zeros or an earlier sum).
at::Tensor plane_grad_by_rows(const Prepared& p, TriplaneTensors t,
                              const at::Tensor& into = at::Tensor()) {
  const TriplaneShape& s = p.shape;
  const auto long_options = p.coords.options().dtype(at::kLong);
  at::Tensor keys = at::empty({s.batch * 3 * s.points}, long_options);
  int64_t* key_data = keys.data_ptr<int64_t>();
  run_on(
      kOp, p.planes, [&] { triplane_row_keys_cpu(s, p.type, t, key_data); },
      [&](void* stream) { return triplane_row_keys_cuda(s, p.type, t, key_data, stream); });
  const auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor order = std::get<1>(sorted);
  const int64_t total_keys = s.batch * 3 * row_keys_per_plane(s);
  const at::Tensor key_start =
      at::searchsorted(std::get<0>(sorted), at::arange(total_keys + 1, long_options));
  at::Tensor grad_planes = into.defined() ? into : zero_plane_grad(p);
  t.row_order = order.data_ptr<int64_t>();
  t.row_key_start = key_start.data_ptr<int64_t>();
  t.grad_planes = grad_planes.data_ptr();
  run_on(
      kOp, p.planes, [&] { triplane_plane_grad_rows_cpu(s, p.type, t); },
      [&](void* stream) { return triplane_plane_grad_rows_cuda(s, p.type, t, stream); });
  return grad_planes;
}

// CUDA adds plane gradients with atomics unless deterministic algorithms are requested.
bool use_row_walk(const at::Tensor& planes) {
  return runs_cuda_kernels(planes) && at::globalContext().deterministicAlgorithms();
}

at::Tensor triplane_sample(const at::Tensor& planes, const at::Tensor& coords, at::IntArrayRef axes,
                           at::ArrayRef<double> scale, int64_t reduce) {
  const Prepared p = prepare(planes, coords, axes, scale, reduce);
  at::Tensor out = empty_output(output_shape(p.shape), planes.options());
  TriplaneTensors t = inputs_of(p);
  t.out = out.data_ptr();
  run_on(
      kOp, planes, [&] { triplane_forward_cpu(p.shape, p.type, t); },
      [&](void* stream) { return triplane_forward_cuda(p.shape, p.type, t, stream); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_backward(
    const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& coords,
    at::IntArrayRef axes, at::ArrayRef<double> scale, int64_t reduce, bool want_planes,
    bool want_coords) {
  const Prepared p = prepare(planes, coords, axes, scale, reduce);
  const at::Tensor grad = checked_grad_out(p, planes, grad_out);
  TriplaneTensors t = inputs_of(p, grad);
  at::Tensor grad_planes, grad_coords;
  const bool rows = want_planes && use_row_walk(planes);
  if (rows) grad_planes = plane_grad_by_rows(p, t);
  if (want_planes && !rows) {
    grad_planes = plane_grad_buffer(p);
    t.grad_planes = grad_planes.data_ptr();
  }
  if (want_coords) {
    grad_coords = empty_output({p.shape.batch, p.shape.points, 3}, p.coords.options());
    t.grad_coords = grad_coords.data_ptr();
  }
  if (t.grad_planes != nullptr || t.grad_coords != nullptr)
    run_on(
        kOp, planes, [&] { triplane_backward_cpu(p.shape, p.type, t); },
        [&](void* stream) { return triplane_backward_cuda(p.shape, p.type, t, stream); });
  return {want_planes ? grad_planes.to(planes.scalar_type()) : nothing(planes),
          want_coords ? grad_coords.to(coords.scalar_type()) : nothing(coords)};
}

// The backward's plane gradient added into `grad_planes` (feature-last [N, 3, (D,) H, W, C],
// contiguous, the accumulation type of grad_out's dtype: float64 for float64, float32
// otherwise): many calls on the same planes (chunks of rays) share one gradient buffer instead
// of returning one each. It needs no plane values (the planes' dtype is grad_out's), so a caller
// need not keep the planes for it.
void triplane_sample_plane_grad_add_(const at::Tensor& grad_planes, const at::Tensor& grad_out,
                                     const at::Tensor& coords, at::IntArrayRef axes,
                                     at::ArrayRef<double> scale, int64_t reduce) {
  check_defined(kOp, "grad_planes", grad_planes);
  check_defined(kOp, "grad_out", grad_out);
  check_same_device(kOp, "grad_planes", grad_planes, "grad_out", grad_out);
  OMNIFAST_CHECK_ARG((grad_planes.dim() == 5 || grad_planes.dim() == 6) && grad_planes.size(1) == 3,
                     kOp, "grad_planes", "feature-last [N, 3, H, W, C] or [N, 3, D, H, W, C]",
                     shape_of(grad_planes));
  const at::Tensor planes =
      at::empty({}, grad_out.options()).expand(grad_planes.sizes());  // shape and dtype only
  const Prepared p = prepare(planes, coords, axes, scale, reduce, /*read_planes=*/false);
  const at::Tensor grad = checked_grad_out(p, planes, grad_out);
  OMNIFAST_CHECK_ARG(
      grad_planes.scalar_type() == p.acc_type, kOp, "grad_planes",
      std::string("of the accumulation type of grad_out (") + c10::toString(p.acc_type) + ")",
      grad_planes.scalar_type());
  OMNIFAST_CHECK_ARG(grad_planes.is_contiguous(), kOp, "grad_planes", "contiguous",
                     "strides " + c10::str(grad_planes.strides()));
  TriplaneTensors t = inputs_of(p, grad);
  if (use_row_walk(planes)) {
    plane_grad_by_rows(p, t, grad_planes);
    return;
  }
  t.grad_planes = grad_planes.data_ptr();
  t.add_to_grad_planes = true;
  run_on(
      kOp, planes, [&] { triplane_backward_cpu(p.shape, p.type, t); },
      [&](void* stream) { return triplane_backward_cuda(p.shape, p.type, t, stream); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplane_sample_double_backward(
    const std::optional<at::Tensor>& grad_grad_planes,
    const std::optional<at::Tensor>& grad_grad_coords, const at::Tensor& grad_out,
    const at::Tensor& planes, const at::Tensor& coords, at::IntArrayRef axes,
    at::ArrayRef<double> scale, int64_t reduce, bool want_grad_out, bool want_planes,
    bool want_coords) {
  const Prepared p = prepare(planes, coords, axes, scale, reduce);
  const at::Tensor grad = checked_grad_out(p, planes, grad_out);
  TriplaneTensors t = inputs_of(p, grad);
  at::Tensor gg_planes;
  if (grad_grad_planes.has_value() && grad_grad_planes->defined()) {
    check_same_device(kOp, "grad_grad_planes", *grad_grad_planes, "planes", planes);
    check_shape(kOp, "grad_grad_planes", *grad_grad_planes, planes.sizes());
    gg_planes = grad_grad_planes->to(planes.scalar_type()).contiguous();
    t.gg_planes = gg_planes.data_ptr();
  }
  const at::Tensor gg_coords = attach_grad_grad_coords(p, coords, grad_grad_coords, t);
  at::Tensor grad_grad_out, grad_planes, grad_coords;
  if (want_grad_out) {
    grad_grad_out = empty_output(output_shape(p.shape), planes.options());
    t.out = grad_grad_out.data_ptr();
  }
  if (want_planes) {
    if (!gg_coords.defined()) {  // planes reach the backward's outputs only through grad_coords
      grad_planes = zero_plane_grad(p);
    } else if (use_row_walk(planes)) {
      grad_planes = plane_grad_by_rows(p, t);
    } else {
      grad_planes = plane_grad_buffer(p);
      t.grad_planes = grad_planes.data_ptr();
    }
  }
  if (want_coords) {
    grad_coords = empty_output({p.shape.batch, p.shape.points, 3}, p.coords.options());
    t.grad_coords = grad_coords.data_ptr();
  }
  if (t.out != nullptr || t.grad_planes != nullptr || t.grad_coords != nullptr)
    run_on(
        kOp, planes, [&] { triplane_double_backward_cpu(p.shape, p.type, t); },
        [&](void* stream) { return triplane_double_backward_cuda(p.shape, p.type, t, stream); });
  return {want_grad_out ? grad_grad_out : nothing(planes),
          want_planes ? grad_planes.to(planes.scalar_type()) : nothing(planes),
          want_coords ? grad_coords.to(coords.scalar_type()) : nothing(coords)};
}

// The plane gradient through the row walk, as an op of its own: the deterministic CUDA path,
// with its CPU twin for the tests. With grad_grad_coords: the double backward's plane term.
at::Tensor triplane_sample_plane_grad_rows(const at::Tensor& grad_out, const at::Tensor& planes,
                                           const at::Tensor& coords,
                                           const std::optional<at::Tensor>& grad_grad_coords,
                                           at::IntArrayRef axes, at::ArrayRef<double> scale,
                                           int64_t reduce) {
  const Prepared p = prepare(planes, coords, axes, scale, reduce);
  const at::Tensor grad = checked_grad_out(p, planes, grad_out);
  TriplaneTensors t = inputs_of(p, grad);
  const at::Tensor gg_coords = attach_grad_grad_coords(p, coords, grad_grad_coords, t);
  return plane_grad_by_rows(p, t).to(planes.scalar_type());
}

}  // namespace
}  // namespace omnifast

TORCH_LIBRARY_IMPL(omnifast, CPU, m) {
  m.impl("triplane_sample_plane_grad_rows", &omnifast::triplane_sample_plane_grad_rows);
  m.impl("triplane_sample", &omnifast::triplane_sample);
  m.impl("triplane_sample_backward", &omnifast::triplane_sample_backward);
  m.impl("triplane_sample_double_backward", &omnifast::triplane_sample_double_backward);
  m.impl("triplane_sample_plane_grad_add_", &omnifast::triplane_sample_plane_grad_add_);
}

#ifdef OMNIFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(omnifast, CUDA, m) {
  m.impl("triplane_sample_plane_grad_rows", &omnifast::triplane_sample_plane_grad_rows);
  m.impl("triplane_sample", &omnifast::triplane_sample);
  m.impl("triplane_sample_backward", &omnifast::triplane_sample_backward);
  m.impl("triplane_sample_double_backward", &omnifast::triplane_sample_double_backward);
  m.impl("triplane_sample_plane_grad_add_", &omnifast::triplane_sample_plane_grad_add_);
}
#endif
