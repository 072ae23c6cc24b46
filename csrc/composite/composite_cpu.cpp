// CPU loops over the shared compositing math (composite.h): one worker per ray. In float32 (what
// training runs), before walking a ray a worker fills the ray's tables of density and opacity
// terms (and, for the backward, each sample's dot product with the upstream feature gradient) in
// vector loops, reading the ray front to back, so the walks (serial, and backwards in the
// backward) run no transcendental function and touch no feature. float64 evaluates the terms as
// CUDA does (LiveTerms), so that the tight float64 tests and gradcheck check that very code.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <type_traits>
#include <vector>

#include "../common/vector_math.h"
#include "composite_launch.h"

namespace omnifast {
namespace {

constexpr int kCpuVec = 32;
constexpr ChunkRange kAllChunks{0, 1};
constexpr int64_t kRayGrain = 64;

// Calls f with the field type and the mode as compile-time constants, so that each table loop
// is one straight-line body the compiler vectorises.
template <typename F>
void with_constants(const CompositeShape& s, F&& f) {
  auto with_mode = [&](auto field) {
    if (s.mode == kModeMidpoint)
      f(field, std::integral_constant<int, kModeMidpoint>{});
    else
      f(field, std::integral_constant<int, kModeAbsorption>{});
  };
  switch (s.field) {
    case kFieldSdf:
      return with_mode(std::integral_constant<int, kFieldSdf>{});
    case kFieldSdfLaplace:
      return with_mode(std::integral_constant<int, kFieldSdfLaplace>{});
    default:
      return with_mode(std::integral_constant<int, kFieldDensity>{});
  }
}

// float32's terms of one ray (the `terms` of composite.h's walks), refilled for each ray a worker
// takes.
class RayTables {
  using T = float;

 public:
  RayTables(const CompositeShape& s, const CompositeInputs<T, T>& in)
      : s_(s), in_(in), L_(interval_count(s)), storage_(4 * s.samples + 4 * L_) {
    T* next = storage_.data();
    auto take = [&next](int64_t n) {
      T* table = next;
      next += n;
      return table;
    };
    sigma_ = take(s.samples);
    d_field_ = take(s.samples);
    d_beta_ = take(s.samples);
    dots_ = take(s.samples);
    softplus_ = take(L_);
    softplus_grad_ = take(L_);
    survival_ = take(L_);
    transmittance_ = take(L_);
  }
  RayTables(const RayTables&) = delete;  // the table pointers point into storage_
  RayTables& operator=(const RayTables&) = delete;

  // The backward (with the ray's upstream feature gradient `g`) also gets the density
  // derivatives, every T_k (a forward product, in double) and the dot products.
  void start_ray(int64_t r, bool backward, const T* g) {
    with_constants(s_, [&](auto field, auto mode) {
      if (backward)
        fill_terms<field(), mode(), true>(r);
      else
        fill_terms<field(), mode(), false>(r);
    });
    if (!backward) return;
    fill_dots(in_.features + r * s_.samples * s_.channels, g);
    double product = 1;
    for (int64_t k = 0; k < L_; ++k) {
      transmittance_[k] = static_cast<T>(product);
      product *= static_cast<double>(opacity(k).factor);
    }
  }

  Density<T> density(int64_t j) const { return {sigma_[j], d_field_[j], d_beta_[j]}; }
  Opacity<T> opacity(int64_t k, const Interval<T>& = {}) const {
    return Opacity<T>(softplus_[k], softplus_grad_[k], survival_[k]);
  }
  T transmittance_down(int64_t k, const Opacity<T>&) const { return transmittance_[k]; }
  template <int VEC, typename Reduce>
  T feature_dot(const Interval<T>& iv, const T*, ChunkRange, Reduce&&) const {
    return (dots_[iv.first] + dots_[iv.second]) / T(2);  // one sample's, or the midpoint's
  }

 private:
  template <int FIELD, int MODE, bool DERIVATIVES>
  OMNIFAST_VECTOR_CLONES void fill_terms(int64_t r) {
    const int64_t S = s_.samples, base = r * S;
    if (in_.delta != nullptr)
      densities<FIELD, DERIVATIVES, true>(S, in_.field + base, in_.delta + base, in_.beta, sigma_,
                                          d_field_, d_beta_);
    else
      densities<FIELD, DERIVATIVES, false>(S, in_.field + base, nullptr, in_.beta, sigma_, d_field_,
                                           d_beta_);
    opacities<MODE>(S, in_.depths + base, sigma_, softplus_, softplus_grad_, survival_);
    if (L_ == S) {  // absorption's last interval, 1e10 long
      const T* z = in_.depths + base;
      const Opacity<T> o = opacity_of<VectorMath>(
          interval_between(MODE, S - 1, z[S - 1], z[S - 1], sigma_[S - 1], T(0), true));
      softplus_[S - 1] = o.softplus;
      softplus_grad_[S - 1] = o.softplus_grad;
      survival_[S - 1] = o.survival;
    }
  }

  // The table loops take restrict pointers and values, so that the compiler knows that no
  // store changes an input, and vectorises them.
  template <int FIELD, bool DERIVATIVES, bool DELTA>
  static OMNIFAST_HD void densities(int64_t n, const T* __restrict field, const T* __restrict delta,
                                    T beta, T* __restrict sigma, T* __restrict d_field,
                                    T* __restrict d_beta) {
    for (int64_t j = 0; j < n; ++j) {
      const Density<T> d = raw_density<VectorMath>(FIELD, field[j], beta, DELTA ? delta[j] : T(0));
      sigma[j] = d.sigma;
      if (DERIVATIVES) {
        d_field[j] = d.d_field;
        d_beta[j] = d.d_beta;
      }
    }
  }

  // Every interval with a sample after it (all but absorption's last).
  template <int MODE>
  static OMNIFAST_HD void opacities(int64_t samples, const T* __restrict z,
                                    const T* __restrict sigma, T* __restrict softplus,
                                    T* __restrict softplus_grad, T* __restrict survival) {
    for (int64_t k = 0; k + 1 < samples; ++k) {
      const Opacity<T> o = opacity_of<VectorMath>(
          interval_between(MODE, k, z[k], z[k + 1], sigma[k], sigma[k + 1], false));
      softplus[k] = o.softplus;
      softplus_grad[k] = o.softplus_grad;
      survival[k] = o.survival;
    }
  }

  // <features of sample j, g> for every sample, each over eight running sums (one vector
  // register) added pairwise at the end: a single running sum would be a serial chain of adds.
  OMNIFAST_VECTOR_CLONES void fill_dots(const T* features, const T* g) {
    constexpr int kSums = 8;
    const int64_t C = s_.channels;
    for (int64_t j = 0; j < s_.samples; ++j) {
      const T* f = features + j * C;
      T sums[kSums] = {};
      int64_t c = 0;
      for (; c + kSums <= C; c += kSums)
        for (int l = 0; l < kSums; ++l) sums[l] += f[c + l] * g[c + l];
      for (; c < C; ++c) sums[0] += f[c] * g[c];
      dots_[j] =
          ((sums[0] + sums[4]) + (sums[1] + sums[5])) + ((sums[2] + sums[6]) + (sums[3] + sums[7]));
    }
  }

  const CompositeShape& s_;
  const CompositeInputs<T, T>& in_;
  int64_t L_;
  std::vector<T> storage_;
  T *sigma_, *d_field_, *d_beta_, *dots_;                      // [S]
  T *softplus_, *softplus_grad_, *survival_, *transmittance_;  // [L]
};

// float64's terms: CUDA's LiveTerms, moved from ray to ray.
class LiveRayTerms : public LiveTerms<double, double> {
 public:
  LiveRayTerms(const CompositeShape& s, const CompositeInputs<double, double>& in,
               const double* log_transmittance)
      : LiveTerms(s, in, 0, nullptr), log_transmittance_(log_transmittance) {}

  void start_ray(int64_t r, bool backward, const double*) {
    base = r * s.samples;
    log_t = backward ? log_transmittance_[r] : 0.0;
  }

 private:
  const double* log_transmittance_;
};

template <typename T>
using CpuTerms = std::conditional_t<std::is_same<T, double>::value, LiveRayTerms, RayTables>;

template <typename T>
CpuTerms<T> cpu_terms(const CompositeShape& s, const CompositeInputs<T, T>& in,
                      const CompositeTensors& t) {
  if constexpr (std::is_same<T, double>::value)
    return LiveRayTerms(s, in, static_cast<const double*>(t.log_transmittance));
  else
    return RayTables(s, in);
}

// Rays [begin, end) of one worker.
template <typename T>
OMNIFAST_VECTOR_CLONES void forward_rays(const CompositeShape& s, const CompositeTensors& t,
                                         int64_t begin, int64_t end) {
  const auto in = composite_inputs<T, T>(t);
  CpuTerms<T> terms = cpu_terms<T>(s, in, t);
  for (int64_t r = begin; r < end; ++r) {
    terms.start_ray(r, false, nullptr);
    composite_forward_ray<kCpuVec, T, T>(
        s, in, terms, static_cast<T*>(t.features_out), static_cast<T*>(t.opacity),
        static_cast<T*>(t.depth_raw), static_cast<T*>(t.weights),
        static_cast<double*>(t.log_transmittance), r, kAllChunks, true);
  }
}

template <typename T>
OMNIFAST_VECTOR_CLONES void backward_rays(const CompositeShape& s, const CompositeTensors& t,
                                          int64_t begin, int64_t end) {
  const auto in = composite_inputs<T, T>(t);
  const auto grads = composite_grads<T>(t);
  const auto out = composite_grad_outputs<T>(t);
  CpuTerms<T> terms = cpu_terms<T>(s, in, t);
  for (int64_t r = begin; r < end; ++r) {
    terms.start_ray(r, true, grads.features + r * s.channels);
    composite_backward_ray<kCpuVec, T, T>(s, in, terms, static_cast<const T*>(t.opacity),
                                          static_cast<const T*>(t.depth_raw), grads, out, r,
                                          kAllChunks, true, [](T partial) { return partial; });
  }
}

template <typename T>
void forward(const CompositeShape& s, const CompositeTensors& t) {
  at::parallel_for(0, s.rays, kRayGrain,
                   [&](int64_t begin, int64_t end) { forward_rays<T>(s, t, begin, end); });
}

template <typename T>
void backward(const CompositeShape& s, const CompositeTensors& t) {
  at::parallel_for(0, s.rays, kRayGrain,
                   [&](int64_t begin, int64_t end) { backward_rays<T>(s, t, begin, end); });
}

template <typename T>
void importance(const SamplingShape& s, const void* depths, const void* weights, const void* u,
                void* out) {
  at::parallel_for(0, s.rays, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      importance_sample_ray(s, static_cast<const T*>(depths), static_cast<const T*>(weights),
                            static_cast<const T*>(u), static_cast<T*>(out), r);
  });
}

template <typename T>
void merge(int64_t rays, int64_t coarse, int64_t fine, const void* coarse_depths,
           const void* fine_depths, int64_t* order) {
  at::parallel_for(0, rays, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      merge_order_ray(coarse, fine, static_cast<const T*>(coarse_depths),
                      static_cast<const T*>(fine_depths), order, r);
  });
}

}  // namespace

void importance_sample_cpu(const SamplingShape& s, bool is_double, const void* depths,
                           const void* weights, const void* u, void* out) {
  is_double ? importance<double>(s, depths, weights, u, out)
            : importance<float>(s, depths, weights, u, out);
}

void merge_order_cpu(int64_t rays, int64_t coarse, int64_t fine, bool is_double,
                     const void* coarse_depths, const void* fine_depths, int64_t* order) {
  is_double ? merge<double>(rays, coarse, fine, coarse_depths, fine_depths, order)
            : merge<float>(rays, coarse, fine, coarse_depths, fine_depths, order);
}

void composite_forward_cpu(const CompositeShape& s, StorageType type, const CompositeTensors& t) {
  TORCH_CHECK(type == StorageType::kFloat32 || type == StorageType::kFloat64,
              "omnifast: the CPU compositing kernels take float32 or float64");
  type == StorageType::kFloat64 ? forward<double>(s, t) : forward<float>(s, t);
}

void composite_backward_cpu(const CompositeShape& s, StorageType type, const CompositeTensors& t) {
  TORCH_CHECK(type == StorageType::kFloat32 || type == StorageType::kFloat64,
              "omnifast: the CPU compositing kernels take float32 or float64");
  type == StorageType::kFloat64 ? backward<double>(s, t) : backward<float>(s, t);
}

}  // namespace omnifast
