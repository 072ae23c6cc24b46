// Torch glue of the fused compositor: checks, allocation, and the hand-off to the CPU loops or
// the CUDA launchers. Inputs arrive flattened to rays: features [R, S, C], field and depths and
// the optional density correction [R, S], beta one value.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "../common/checks.h"
#include "../common/dispatch.h"
#include "../common/host_memory.h"
#include "composite_launch.h"

namespace omnifast {
namespace {

constexpr const char* kOp = "composite";

struct Prepared {
  CompositeShape shape;
  StorageType type;
  at::ScalarType acc_type;
  at::Tensor features, field, depths, delta, beta;  // contiguous; delta/beta may be undefined
};

// A per-sample companion of `field`: same shape, device and accumulation dtype.
at::Tensor per_sample(const char* arg, const at::Tensor& t, const at::Tensor& field) {
  check_same_device(kOp, arg, t, "features", field);
  check_shape(kOp, arg, t, field.sizes());
  OMNIFAST_CHECK_ARG(
      t.scalar_type() == field.scalar_type(), kOp, arg,
      std::string("of the dtype of field (") + c10::toString(field.scalar_type()) + ")",
      t.scalar_type());
  return t.contiguous();
}

Prepared prepare(const at::Tensor& features, const at::Tensor& field, const at::Tensor& depths,
                 const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& delta,
                 int64_t field_type, int64_t mode) {
  check_defined(kOp, "features", features);
  check_defined(kOp, "field", field);
  check_defined(kOp, "depths", depths);
  OMNIFAST_CHECK_ARG(features.dim() == 3, kOp, "features", "[rays, samples, channels]",
                     shape_of(features));
  const auto dtype = features.scalar_type();
  OMNIFAST_CHECK_ARG(dtype == at::kFloat || dtype == at::kDouble || is_16bit(dtype), kOp,
                     "features", "float32, float64, float16 or bfloat16", dtype);
  OMNIFAST_CHECK_ARG(!is_16bit(dtype) || runs_cuda_kernels(features), kOp, "features",
                     "float32 or float64 on the CPU (16-bit features are CUDA-only)", dtype);
  OMNIFAST_CHECK_ARG(features.is_cpu() || features.is_cuda(), kOp, "features",
                     "on a CPU or CUDA device", features.device().str());
  const at::ScalarType acc_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  check_same_device(kOp, "field", field, "features", features);
  check_shape(kOp, "field", field, {features.size(0), features.size(1)});
  OMNIFAST_CHECK_ARG(field.scalar_type() == acc_type, kOp, "field",
                     std::string(c10::toString(acc_type)) + " (from features)",
                     field.scalar_type());
  OMNIFAST_CHECK_ARG(features.size(1) >= 2, kOp, "features", "at least 2 samples per ray",
                     shape_of(features));
  OMNIFAST_CHECK_ARG(field_type >= kFieldSdf && field_type <= kFieldDensity, kOp, "field_type",
                     "0 (sdf), 1 (sdf_laplace) or 2 (density)", field_type);
  OMNIFAST_CHECK_ARG(mode == kModeMidpoint || mode == kModeAbsorption, kOp, "mode",
                     "0 (midpoint) or 1 (absorption)", mode);

  Prepared p;
  p.shape = CompositeShape{features.size(0), features.size(1), features.size(2),
                           static_cast<int>(field_type), static_cast<int>(mode)};
  p.type = storage_type_of(dtype);
  p.acc_type = acc_type;
  p.features = features.contiguous();
  p.field = field.contiguous();
  p.depths = per_sample("depths", depths, p.field);
  if (delta.has_value() && delta->defined()) p.delta = per_sample("density_delta", *delta, p.field);
  const bool needs_beta = field_type != kFieldDensity;
  const bool has_beta = beta.has_value() && beta->defined();
  OMNIFAST_CHECK_ARG(has_beta || !needs_beta, kOp, "beta", "a tensor for SDF fields", "None");
  if (has_beta) {
    check_same_device(kOp, "beta", *beta, "features", features);
    OMNIFAST_CHECK_ARG(beta->numel() == 1, kOp, "beta", "one value", shape_of(*beta));
    OMNIFAST_CHECK_ARG(beta->scalar_type() == acc_type, kOp, "beta",
                       std::string(c10::toString(acc_type)) + " (from features)",
                       beta->scalar_type());
    p.beta = beta->contiguous();
    // Read on the host on every device: a device-side assert would kill the process's CUDA
    // context, where this is an error the caller can catch.
    if (needs_beta) {
      const double value = p.beta.item<double>();
      OMNIFAST_CHECK_ARG(value > 0, kOp, "beta", "positive", value);
    }
  }
  return p;
}

CompositeTensors inputs_of(const Prepared& p) {
  CompositeTensors t;
  t.features = p.features.data_ptr();
  t.field = p.field.data_ptr();
  t.depths = p.depths.data_ptr();
  t.delta = p.delta.defined() ? p.delta.data_ptr() : nullptr;
  t.beta = p.beta.defined() ? p.beta.data_ptr() : nullptr;
  return t;
}

at::Tensor per_ray(const Prepared& p, const char* arg, const at::Tensor& t, at::IntArrayRef shape) {
  check_defined(kOp, arg, t);
  check_same_device(kOp, arg, t, "features", p.features);
  check_shape(kOp, arg, t, shape);
  return t.to(p.acc_type).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite(
    const at::Tensor& features, const at::Tensor& field, const at::Tensor& depths,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& density_delta,
    int64_t field_type, int64_t mode, bool want_weights) {
  const Prepared p = prepare(features, field, depths, beta, density_delta, field_type, mode);
  const CompositeShape& s = p.shape;
  const auto acc = p.field.options();
  at::Tensor out = at::empty({s.rays, s.channels}, acc);
  at::Tensor opacity = at::empty({s.rays}, acc);
  at::Tensor depth_raw = at::empty({s.rays}, acc);
  at::Tensor weights =
      want_weights ? at::empty({s.rays, interval_count(s)}, acc) : at::empty({0}, acc);
  at::Tensor log_transmittance = at::empty({s.rays}, acc.dtype(at::kDouble));
  CompositeTensors t = inputs_of(p);
  t.log_transmittance = log_transmittance.data_ptr();
  t.features_out = out.data_ptr();
  t.opacity = opacity.data_ptr();
  t.depth_raw = depth_raw.data_ptr();
  t.weights = want_weights ? weights.data_ptr() : nullptr;
  run_on(
      kOp, features, [&] { composite_forward_cpu(s, p.type, t); },
      [&](void* stream) { return composite_forward_cuda(s, p.type, t, stream); });
  return {out.to(features.scalar_type()), opacity, depth_raw, weights, log_transmittance};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_backward(
    const at::Tensor& grad_features_out, const at::Tensor& grad_opacity,
    const at::Tensor& grad_depth_raw, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& features, const at::Tensor& field, const at::Tensor& depths,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& density_delta,
    const at::Tensor& opacity, const at::Tensor& depth_raw, const at::Tensor& log_transmittance,
    int64_t field_type, int64_t mode) {
  const Prepared p = prepare(features, field, depths, beta, density_delta, field_type, mode);
  const CompositeShape& s = p.shape;
  const at::Tensor g_out = per_ray(p, "grad_features", grad_features_out, {s.rays, s.channels});
  const at::Tensor g_opacity = per_ray(p, "grad_opacity", grad_opacity, {s.rays});
  const at::Tensor g_depth = per_ray(p, "grad_depth", grad_depth_raw, {s.rays});
  const at::Tensor saved_opacity = per_ray(p, "opacity", opacity, {s.rays});
  const at::Tensor saved_depth = per_ray(p, "depth_raw", depth_raw, {s.rays});
  check_defined(kOp, "log_transmittance", log_transmittance);
  check_same_device(kOp, "log_transmittance", log_transmittance, "features", features);
  check_shape(kOp, "log_transmittance", log_transmittance, {s.rays});
  const at::Tensor saved_log_t = log_transmittance.to(at::kDouble).contiguous();
  at::Tensor g_weights;
  if (grad_weights.has_value() && grad_weights->defined() && grad_weights->numel() > 0)
    g_weights = per_ray(p, "grad_weights", *grad_weights, {s.rays, interval_count(s)});

  const auto acc = p.field.options();
  at::Tensor grad_features = empty_output({s.rays, s.samples, s.channels}, acc);
  at::Tensor grad_field = at::empty({s.rays, s.samples}, acc);
  at::Tensor grad_depths = at::empty({s.rays, s.samples}, acc);
  at::Tensor grad_delta =
      p.delta.defined() ? at::empty({s.rays, s.samples}, acc) : at::empty({0}, acc);
  at::Tensor beta_partials = at::empty({s.rays}, acc);
  CompositeTensors t = inputs_of(p);
  t.opacity = saved_opacity.data_ptr();
  t.depth_raw = saved_depth.data_ptr();
  t.log_transmittance = saved_log_t.data_ptr();
  t.grad_features_out = g_out.data_ptr();
  t.grad_opacity = g_opacity.data_ptr();
  t.grad_depth_raw = g_depth.data_ptr();
  t.grad_weights = g_weights.defined() ? g_weights.data_ptr() : nullptr;
  t.grad_features = grad_features.data_ptr();
  t.grad_field = grad_field.data_ptr();
  t.grad_depths = grad_depths.data_ptr();
  t.grad_delta = p.delta.defined() ? grad_delta.data_ptr() : nullptr;
  t.grad_beta = beta_partials.data_ptr();
  run_on(
      kOp, features, [&] { composite_backward_cpu(s, p.type, t); },
      [&](void* stream) { return composite_backward_cuda(s, p.type, t, stream); });
  // beta is one value shared by every sample: the per-ray partials sum in a fixed order.
  at::Tensor grad_beta =
      p.beta.defined() ? beta_partials.sum().reshape(p.beta.sizes()) : at::empty({0}, acc);
  return {grad_features.to(features.scalar_type()), grad_field, grad_depths, grad_delta, grad_beta};
}

// Two-dimensional [rays, k] float tensor on the device and of the dtype of `like`.
at::Tensor per_ray_rows(const char* op, const char* arg, const at::Tensor& t,
                        const at::Tensor& like) {
  check_defined(op, arg, t);
  OMNIFAST_CHECK_ARG(t.dim() == 2 && t.size(0) == like.size(0), op, arg,
                     "[rays, k] with rays = " + std::to_string(like.size(0)), shape_of(t));
  check_same_device(op, arg, t, "depths", like);
  OMNIFAST_CHECK_ARG(
      t.scalar_type() == like.scalar_type(), op, arg,
      std::string("of the dtype of depths (") + c10::toString(like.scalar_type()) + ")",
      t.scalar_type());
  return t.contiguous();
}

void check_depths(const char* op, const at::Tensor& depths) {
  check_defined(op, "depths", depths);
  OMNIFAST_CHECK_ARG(depths.dim() == 2, op, "depths", "[rays, samples]", shape_of(depths));
  OMNIFAST_CHECK_ARG(depths.scalar_type() == at::kFloat || depths.scalar_type() == at::kDouble, op,
                     "depths", "float32 or float64", depths.scalar_type());
  OMNIFAST_CHECK_ARG(depths.is_cpu() || depths.is_cuda(), op, "depths", "on a CPU or CUDA device",
                     depths.device().str());
}

at::Tensor importance_sample(const at::Tensor& depths, const at::Tensor& weights,
                             const at::Tensor& u) {
  const char* op = "importance_sample";
  check_depths(op, depths);
  const at::Tensor z = depths.contiguous();
  const at::Tensor w = per_ray_rows(op, "weights", weights, z);
  const at::Tensor draws = per_ray_rows(op, "u", u, z);
  const int64_t S = z.size(1), L = w.size(1);
  OMNIFAST_CHECK_ARG(
      (L == S - 1 || L == S) && L >= 3, op, "weights",
      "[rays, S - 1] or [rays, S] with at least 3 weights (S = " + std::to_string(S) + ")",
      shape_of(w));
  const SamplingShape s{z.size(0), S, L, draws.size(1)};
  at::Tensor out = at::empty({s.rays, s.draws}, z.options());
  const bool is_double = z.scalar_type() == at::kDouble;
  run_on(
      op, z,
      [&] {
        importance_sample_cpu(s, is_double, z.data_ptr(), w.data_ptr(), draws.data_ptr(),
                              out.data_ptr());
      },
      [&](void* stream) {
        return importance_sample_cuda(s, is_double, z.data_ptr(), w.data_ptr(), draws.data_ptr(),
                                      out.data_ptr(), stream);
      });
  return out;
}

at::Tensor merge_order(const at::Tensor& coarse, const at::Tensor& fine) {
  const char* op = "merge_samples";
  check_depths(op, coarse);
  const at::Tensor c = coarse.contiguous();
  const at::Tensor f = per_ray_rows(op, "fine depths", fine, c);
  at::Tensor order = at::empty({c.size(0), c.size(1) + f.size(1)}, c.options().dtype(at::kLong));
  int64_t* out = order.data_ptr<int64_t>();
  const bool is_double = c.scalar_type() == at::kDouble;
  run_on(
      op, c,
      [&] {
        merge_order_cpu(c.size(0), c.size(1), f.size(1), is_double, c.data_ptr(), f.data_ptr(),
                        out);
      },
      [&](void* stream) {
        return merge_order_cuda(c.size(0), c.size(1), f.size(1), is_double, c.data_ptr(),
                                f.data_ptr(), out, stream);
      });
  return order;
}

}  // namespace
}  // namespace omnifast

TORCH_LIBRARY_IMPL(omnifast, CPU, m) {
  m.impl("importance_sample", &omnifast::importance_sample);
  m.impl("merge_order", &omnifast::merge_order);
  m.impl("composite", &omnifast::composite);
  m.impl("composite_backward", &omnifast::composite_backward);
}

#ifdef OMNIFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(omnifast, CUDA, m) {
  m.impl("importance_sample", &omnifast::importance_sample);
  m.impl("merge_order", &omnifast::merge_order);
  m.impl("composite", &omnifast::composite);
  m.impl("composite_backward", &omnifast::composite_backward);
}
#endif
