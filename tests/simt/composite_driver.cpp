// Runs the composite kernels of a SIMT compile (forward, then backward) on small host arrays and
// prints "ok" or the error the launch reported. tests/test_simt.py builds it twice: from the
// sources as they are, and with a defect planted in composite_cuda.cu.
#include <cstdio>
#include <vector>

#include "composite/composite_launch.h"

using namespace omnifast;

int main() {
  // 37 rays x 2 lanes (5 channels): 74 threads, not a whole number of warps.
  const int64_t rays = 37, samples = 8, channels = 5;
  const CompositeShape s{rays, samples, channels, kFieldSdf, kModeMidpoint};
  std::vector<float> features(rays * samples * channels, 0.5f), field(rays * samples),
      depths(rays * samples);
  for (int64_t i = 0; i < rays * samples; ++i) {
    field[i] = 0.1f - 0.03f * float(i % samples);
    depths[i] = 1.0f + 0.1f * float(i % samples);
  }
  const float beta = 0.05f;
  std::vector<float> out(rays * channels), opacity(rays), depth(rays);
  std::vector<double> log_t(rays);
  CompositeTensors t;
  t.features = features.data();
  t.field = field.data();
  t.depths = depths.data();
  t.beta = &beta;
  t.features_out = out.data();
  t.opacity = opacity.data();
  t.depth_raw = depth.data();
  t.log_transmittance = log_t.data();
  const char* err = composite_forward_cuda(s, StorageType::kFloat32, t, nullptr);
  std::vector<float> g_out(rays * channels, 1.0f), g_ray(rays, 1.0f);
  std::vector<float> g_features(rays * samples * channels), g_field(rays * samples),
      g_depths(rays * samples), g_beta(rays);
  t.grad_features_out = g_out.data();
  t.grad_opacity = g_ray.data();
  t.grad_depth_raw = g_ray.data();
  t.grad_features = g_features.data();
  t.grad_field = g_field.data();
  t.grad_depths = g_depths.data();
  t.grad_beta = g_beta.data();
  if (err == nullptr) err = composite_backward_cuda(s, StorageType::kFloat32, t, nullptr);
  std::printf("%s\n", err == nullptr ? "ok" : err);
  return err == nullptr ? 0 : 1;
}
