// Fused SDF-to-density volume rendering along a ray, written once for the CPU loops and the CUDA
// kernels. It reproduces EG3D's MipRayMarcher2 chain exactly: per-sample raw density (from an
// SDF or given), midpoint averaging (or the absorption layout), softplus(sigma - 1),
// alpha = 1 - exp(-sigma * delta), transmittance as the product of (1 - alpha + 1e-10),
// weights, and the weighted sums. The caller finishes depth (nan_to_num, the global clamp) and
// white_back on the per-ray outputs, exactly as the reference does.
//
// The backward needs no stored per-sample state and never divides by 1 - alpha. It walks each
// ray once, backwards, with the suffix recurrence R_k = g_k alpha_k + t_k R_{k+1} (g_k: the
// loss gradient of weight w_k, t_k = 1 - alpha_k + 1e-10), giving dL/dalpha_k = T_k (g_k - R_{k+1})
// and dL/dtau_k = exp(-tau_k) dL/dalpha_k. T_k comes from the ray's terms (below): rebuilt
// backwards from the ray's sum of log t (saved by the forward, in double), or read from a
// per-ray table filled by a forward product; either way opaque rays whose transmittance
// underflows stay exact.
//
// Both walks take each sample's density, each interval's opacity and T_k, and the dot product of
// an interval's features with their upstream gradient from a `terms` object: LiveTerms evaluates
// them as asked (CUDA, where nothing is stored per ray, and the CPU in float64); the CPU's
// float32 path fills per-ray tables in vector loops first (composite_cpu.cpp), so that its walks
// run no transcendental function and read no feature.
#pragma once

#include "../common/host_device.h"
#include "../triplane/triplane.h"  // ChunkRange

namespace omnifast {

enum CompositeField : int { kFieldSdf = 0, kFieldSdfLaplace = 1, kFieldDensity = 2 };
enum CompositeMode : int { kModeMidpoint = 0, kModeAbsorption = 1 };

struct CompositeShape {
  int64_t rays;      // R (all leading dimensions flattened)
  int64_t samples;   // S
  int64_t channels;  // C
  int field;         // CompositeField
  int mode;          // CompositeMode
};

// Raw density of one sample and its derivatives with respect to the field value and beta.
template <typename acc_t>
struct Density {
  acc_t sigma, d_field, d_beta;
};

template <typename Math = StandardMath, typename acc_t>
OMNIFAST_HD Density<acc_t> raw_density(int field, acc_t value, acc_t beta, acc_t delta) {
  Density<acc_t> d{value + delta, acc_t(1), acc_t(0)};
  if (field == kFieldSdf) {
    // sigmoid(-s / beta) / beta, as OmniAvatar's sdf_activation(-s). The sigmoid and its
    // complement both come from exp(-|u|), so neither loses precision as the other nears 1.
    const acc_t u = value / beta;
    const acc_t e = Math::exp(u < acc_t(0) ? u : -u);
    const acc_t small = e / (acc_t(1) + e), large = acc_t(1) / (acc_t(1) + e);
    const acc_t sig = u > acc_t(0) ? small : large;   // sigmoid(-u)
    const acc_t rest = u > acc_t(0) ? large : small;  // 1 - sigmoid(-u)
    d.sigma = sig / beta + delta;
    d.d_field = -sig * rest / (beta * beta);
    d.d_beta = sig / (beta * beta) * (rest * u - acc_t(1));
  } else if (field == kFieldSdfLaplace) {
    // VolSDF: Laplace CDF of -s with scale beta, over beta; exp(-|s| / beta) never overflows.
    const acc_t e = Math::exp(-(value < acc_t(0) ? -value : value) / beta) / acc_t(2);
    const acc_t psi = value >= acc_t(0) ? e : acc_t(1) - e;
    d.sigma = psi / beta + delta;
    d.d_field = -e / (beta * beta);
    const acc_t d_psi_d_beta = e * value / (beta * beta);  // the same on both branches
    d.d_beta = d_psi_d_beta / beta - psi / (beta * beta);
  }
  return d;
}

// softplus(x - 1) with PyTorch's threshold of 20, and its derivative, from one exp. Selects,
// not branches, so that a CPU loop over intervals vectorises.
template <typename acc_t>
struct Softplus {
  acc_t value, grad;
};

template <typename Math = StandardMath, typename acc_t>
OMNIFAST_HD Softplus<acc_t> shifted_softplus(acc_t x) {
  const acc_t y = x - acc_t(1);
  const bool linear = y > acc_t(20);
  const acc_t z = Math::exp(linear ? acc_t(20) : y);
  return {linear ? y : Math::log1p(z), linear ? acc_t(1) : z / (z + acc_t(1))};
}

// Pointers of one call; per-sample arrays are contiguous [R, S] (features [R, S, C]).
template <typename scalar_t, typename acc_t>
struct CompositeInputs {
  const scalar_t* features;
  const acc_t* field;
  const acc_t* depths;
  const acc_t* delta;  // optional density correction, null when absent
  acc_t beta;
};

// One interval of the marcher: its raw-density midpoint, depth midpoint and length, and which
// samples feed its features with which weights.
template <typename acc_t>
struct Interval {
  acc_t sigma, depth, length;
  int64_t first, second;  // samples averaged (midpoint) or the sample itself twice (absorption)
};

OMNIFAST_HD int64_t interval_count(const CompositeShape& s) {
  return s.mode == kModeMidpoint ? s.samples - 1 : s.samples;
}

// Raw density of sample `index` (flat over rays and samples).
template <typename scalar_t, typename acc_t>
OMNIFAST_HD Density<acc_t> sample_density(const CompositeShape& s,
                                          const CompositeInputs<scalar_t, acc_t>& in,
                                          int64_t index) {
  const acc_t delta = in.delta != nullptr ? in.delta[index] : acc_t(0);
  return raw_density(s.field, in.field[index], in.beta, delta);
}

// Interval k from samples k and k + 1 (depths z0, z1; raw densities sigma_k, sigma_next). The
// absorption layout uses only sample k, and its last interval (`last`) is 1e10 long.
template <typename acc_t>
OMNIFAST_HD Interval<acc_t> interval_between(int mode, int64_t k, acc_t z0, acc_t z1, acc_t sigma_k,
                                             acc_t sigma_next, bool last) {
  Interval<acc_t> iv;
  if (mode == kModeMidpoint) {
    iv.sigma = (sigma_k + sigma_next) / acc_t(2);
    iv.depth = (z0 + z1) / acc_t(2);
    iv.length = z1 - z0;
    iv.first = k;
    iv.second = k + 1;
  } else {
    iv.sigma = sigma_k;
    iv.depth = z0;
    iv.length = last ? acc_t(1e10) : z1 - z0;
    iv.first = iv.second = k;
  }
  return iv;
}

// Interval k of a ray whose depths z points at (sigma_next unused by the absorption layout).
template <typename acc_t>
OMNIFAST_HD Interval<acc_t> make_interval(const CompositeShape& s, const acc_t* z, int64_t k,
                                          acc_t sigma_k, acc_t sigma_next) {
  const bool last = k + 1 == s.samples;
  return interval_between(s.mode, k, z[k], last ? z[k] : z[k + 1], sigma_k, sigma_next, last);
}

// Feature c of interval iv: the midpoint average (a + b) / 2, or the sample's own value.
template <typename scalar_t, typename acc_t>
OMNIFAST_HD acc_t interval_feature(const CompositeShape& s, const scalar_t* features, int64_t base,
                                   const Interval<acc_t>& iv, int64_t c) {
  const acc_t a = load_as<acc_t>(features[(base + iv.first) * s.channels + c]);
  if (s.mode != kModeMidpoint) return a;
  const acc_t b = load_as<acc_t>(features[(base + iv.second) * s.channels + c]);
  return (a + b) / acc_t(2);
}

// alpha and the transmittance factor of one interval, from softplus(sigma - 1) (and its
// derivative) and the survival exp(-tau), tau = softplus * length.
template <typename acc_t>
struct Opacity {
  acc_t softplus, softplus_grad, survival, alpha, factor;  // factor t_k = 1 - alpha + 1e-10

  OMNIFAST_HD Opacity(acc_t softplus_, acc_t softplus_grad_, acc_t survival_)
      : softplus(softplus_),
        softplus_grad(softplus_grad_),
        survival(survival_),
        alpha(acc_t(1) - survival_),
        factor(acc_t(1) - alpha + acc_t(1e-10)) {}
};

template <typename Math = StandardMath, typename acc_t>
OMNIFAST_HD Opacity<acc_t> opacity_of(const Interval<acc_t>& iv) {
  const Softplus<acc_t> sp = shifted_softplus<Math>(iv.sigma);
  return Opacity<acc_t>(sp.value, sp.grad, Math::exp(-(sp.value * iv.length)));
}

// A ray's terms evaluated as the walks ask for them. `log_transmittance` (the forward's per-ray
// sum of log t, for the backward's T_k) may be null in the forward.
template <typename scalar_t, typename acc_t>
struct LiveTerms {
  const CompositeShape& s;
  const CompositeInputs<scalar_t, acc_t>& in;
  int64_t base;
  double log_t;  // log T_{k+1} while the backward walks k down

  OMNIFAST_HD LiveTerms(const CompositeShape& shape, const CompositeInputs<scalar_t, acc_t>& inputs,
                        int64_t ray, const double* log_transmittance)
      : s(shape),
        in(inputs),
        base(ray * shape.samples),
        log_t(log_transmittance != nullptr ? log_transmittance[ray] : 0.0) {}

  OMNIFAST_HD Density<acc_t> density(int64_t j) const { return sample_density(s, in, base + j); }
  OMNIFAST_HD Opacity<acc_t> opacity(int64_t, const Interval<acc_t>& iv) const {
    return opacity_of(iv);
  }
  // T_k, called for k = L - 1 down to 0.
  OMNIFAST_HD acc_t transmittance_down(int64_t, const Opacity<acc_t>& o) {
    log_t -= log_of(static_cast<double>(o.factor));
    return static_cast<acc_t>(exp_of(log_t));
  }
  // <g, feature of interval iv> over the ray's channels: this worker's share, summed over the
  // ray's workers by `reduce`.
  template <int VEC, typename Reduce>
  OMNIFAST_HD acc_t feature_dot(const Interval<acc_t>& iv, const acc_t* g, ChunkRange chunks,
                                Reduce&& reduce) const {
    acc_t dot = acc_t(0);
    for (int64_t c0 = chunks.first * VEC; c0 < s.channels; c0 += chunks.step * VEC) {
      const int nch = s.channels - c0 < VEC ? static_cast<int>(s.channels - c0) : VEC;
      OMNIFAST_CHANNEL_LOOP(v, nch, VEC)
      dot += g[c0 + v] * interval_feature<scalar_t, acc_t>(s, in.features, base, iv, c0 + v);
    }
    return reduce(dot);
  }
};

// Walks a ray's intervals in order, tracking transmittance exactly as the reference's cumprod.
template <typename acc_t, typename Terms>
struct RayWalk {
  const CompositeShape& s;
  Terms& terms;
  const acc_t* z;       // the ray's depths
  acc_t transmittance;  // T_k before interval k
  acc_t sigma;          // raw density of the interval's first sample

  OMNIFAST_HD RayWalk(const CompositeShape& shape, Terms& ray_terms, const acc_t* depths)
      : s(shape),
        terms(ray_terms),
        z(depths),
        transmittance(acc_t(1)),
        sigma(ray_terms.density(0).sigma) {}

  OMNIFAST_HD Interval<acc_t> interval(int64_t k) {
    const acc_t next = k + 1 < s.samples ? terms.density(k + 1).sigma : acc_t(0);
    const Interval<acc_t> iv = make_interval(s, z, k, sigma, next);
    sigma = next;
    return iv;
  }
};

// Forward of one ray for this worker's channel chunks. Writes the composited features (acc
// type), and when `ray_outputs`: opacity W, the raw depth sum(w z) / W, and the weights if asked.
template <int VEC, typename scalar_t, typename acc_t, typename Terms>
OMNIFAST_HD void composite_forward_ray(const CompositeShape& s,
                                       const CompositeInputs<scalar_t, acc_t>& in, Terms& terms,
                                       acc_t* features_out, acc_t* opacity, acc_t* depth_raw,
                                       acc_t* weights, double* log_transmittance, int64_t r,
                                       ChunkRange chunks, bool ray_outputs) {
  const int64_t L = interval_count(s);
  const int64_t C = s.channels;
  bool first_chunk = true;
  // The worker with the ray outputs walks the ray even when it holds no channels (C = 0).
  for (int64_t c0 = chunks.first * VEC; c0 < C || (first_chunk && ray_outputs);
       c0 += chunks.step * VEC) {
    const int nch = c0 >= C ? 0 : (C - c0 < VEC ? static_cast<int>(C - c0) : VEC);
    acc_t acc[VEC];
    OMNIFAST_UNROLL
    for (int v = 0; v < VEC; ++v) acc[v] = acc_t(0);
    acc_t total = acc_t(0), depth_sum = acc_t(0);
    // log of the product of the factors, for the backward: a double product, folded into a
    // log offset before it could underflow (each factor is at least 1e-10), so one log per ray.
    double product = 1, log_offset = 0;
    const int64_t base = r * s.samples;
    RayWalk<acc_t, Terms> walk(s, terms, in.depths + base);
    for (int64_t k = 0; k < L; ++k) {
      const Interval<acc_t> iv = walk.interval(k);
      const Opacity<acc_t> o = terms.opacity(k, iv);
      const acc_t weight = o.alpha * walk.transmittance;
      walk.transmittance *= o.factor;
      product *= static_cast<double>(o.factor);
      if (product < 1e-200) {
        log_offset += log_of(product);
        product = 1;
      }
      total += weight;
      depth_sum += weight * iv.depth;
      if (ray_outputs && first_chunk && weights != nullptr) weights[r * L + k] = weight;
      OMNIFAST_CHANNEL_LOOP(v, nch, VEC)
      acc[v] += weight * interval_feature<scalar_t, acc_t>(s, in.features, base, iv, c0 + v);
    }
    OMNIFAST_CHANNEL_LOOP(v, nch, VEC) features_out[r * C + c0 + v] = acc[v];
    if (ray_outputs && first_chunk) {
      log_transmittance[r] = log_offset + log_of(product);
      opacity[r] = total;
      depth_raw[r] = depth_sum / total;  // 0 / 0 for an empty ray: NaN, as the reference
    }
    first_chunk = false;
  }
}

// Upstream gradients of one ray, as the backward reads them.
template <typename acc_t>
struct CompositeGrads {
  const acc_t* features;  // [R, C]
  const acc_t* opacity;   // [R]
  const acc_t* depth;     // [R], of the raw depth
  const acc_t* weights;   // [R, L], optional
};

// Gradient outputs: per-sample arrays [R, S] (features [R, S, C]); beta as one partial per ray.
template <typename acc_t>
struct CompositeGradOutputs {
  acc_t* features;
  acc_t* field;
  acc_t* depths;
  acc_t* delta;
  acc_t* beta;
};

// Backward of one ray. `reduce(x)` sums a per-worker partial over the workers of the ray (the
// lanes sharing it on CUDA; the identity on the CPU). Every worker of a ray walks the same
// intervals; the per-ray scalars are written by the worker with `ray_outputs`.
template <int VEC, typename scalar_t, typename acc_t, typename Terms, typename Reduce>
OMNIFAST_HD void composite_backward_ray(const CompositeShape& s,
                                        const CompositeInputs<scalar_t, acc_t>& in, Terms& terms,
                                        const acc_t* opacity, const acc_t* depth_raw,
                                        const CompositeGrads<acc_t>& g,
                                        const CompositeGradOutputs<acc_t>& out, int64_t r,
                                        ChunkRange chunks, bool ray_outputs, Reduce&& reduce) {
  const int64_t L = interval_count(s);
  const int64_t S = s.samples, C = s.channels, base = r * S;
  const acc_t* g_features = g.features + r * C;
  // Depth = D / W: its gradient reaches D and W unless the depth was NaN (W = 0).
  const acc_t W = opacity[r];
  const acc_t g_depth = g.depth[r];
  const bool depth_defined = W != acc_t(0) && g_depth != acc_t(0);
  const acc_t g_depth_sum = depth_defined ? g_depth / W : acc_t(0);
  const acc_t g_total = g.opacity[r] - (depth_defined ? g_depth * depth_raw[r] / W : acc_t(0));
  const bool midpoint = s.mode == kModeMidpoint;
  const acc_t share = midpoint ? acc_t(0.5) : acc_t(1);

  // Sample j collects the "upper" share of interval j - 1 and the "lower" share of interval j:
  // (feature weight, raw-density gradient, depth gradient).
  struct Share {
    acc_t weight, sigma, depth;
  };
  acc_t beta_partial = acc_t(0);
  auto finish_sample = [&](int64_t j, const Density<acc_t>& d, const Share& sum) {
    for (int64_t c0 = chunks.first * VEC; c0 < C; c0 += chunks.step * VEC) {
      const int nch = C - c0 < VEC ? static_cast<int>(C - c0) : VEC;
      acc_t* dst = out.features + (base + j) * C + c0;
      OMNIFAST_CHANNEL_LOOP(v, nch, VEC) dst[v] = sum.weight * g_features[c0 + v];
    }
    if (!ray_outputs) return;
    out.field[base + j] = sum.sigma * d.d_field;
    if (out.delta != nullptr) out.delta[base + j] = sum.sigma;
    out.depths[base + j] = sum.depth;
    beta_partial += sum.sigma * d.d_beta;
  };

  acc_t suffix = acc_t(0);                         // R_{k+1}
  Share lower_next{acc_t(0), acc_t(0), acc_t(0)};  // lower share of interval k + 1
  // Densities of samples k and k + 1: each is taken once and used by both of its intervals
  // and by its own gradient.
  Density<acc_t> after = terms.density(S - 1);
  for (int64_t k = L - 1; k >= 0; --k) {
    const Density<acc_t> here = k + 1 < S ? terms.density(k) : after;
    const Interval<acc_t> iv = make_interval(s, in.depths + base, k, here.sigma, after.sigma);
    const Opacity<acc_t> o = terms.opacity(k, iv);
    const acc_t T = terms.transmittance_down(k, o);  // T_k
    const acc_t weight = o.alpha * T;

    acc_t gw = terms.template feature_dot<VEC>(iv, g_features, chunks, reduce) + g_total +
               g_depth_sum * iv.depth;
    if (g.weights != nullptr) gw += g.weights[r * L + k];

    const acc_t g_alpha = T * (gw - suffix);
    suffix = gw * o.alpha + o.factor * suffix;
    const acc_t g_tau = o.survival * g_alpha;
    const acc_t g_sigma_mid = iv.length * g_tau * o.softplus_grad;
    const acc_t g_length = (!midpoint && k + 1 == S) ? acc_t(0) : o.softplus * g_tau;
    const acc_t g_depth_mid = weight * g_depth_sum;

    // The length z_{k+1} - z_k takes from sample k and gives to sample k + 1.
    const Share lower{share * weight, share * g_sigma_mid, share * g_depth_mid - g_length};
    const Share upper =
        midpoint ? Share{share * weight, share * g_sigma_mid, share * g_depth_mid + g_length}
                 : Share{acc_t(0), acc_t(0), g_length};
    if (k + 1 < S)
      finish_sample(k + 1, after,
                    Share{upper.weight + lower_next.weight, upper.sigma + lower_next.sigma,
                          upper.depth + lower_next.depth});
    lower_next = lower;
    after = here;
  }
  finish_sample(0, after, lower_next);
  if (ray_outputs) out.beta[r] = beta_partial;
}

// ---------------------------------------------------------------------------------------------
// Importance sampling (EG3D's sample_importance + sample_pdf, fused) and sorted merging.

struct SamplingShape {
  int64_t rays;     // R
  int64_t samples;  // S coarse depths per ray
  int64_t weights;  // L = S - 1 (midpoint weights) or S (absorption)
  int64_t draws;    // n
};

// EG3D's smoothed weight at i: the average of max(w[i-1], w[i]) and max(w[i], w[i+1]), with
// max-pool's implicit -inf padding at both ends.
template <typename acc_t>
OMNIFAST_HD acc_t smoothed_weight(const acc_t* w, int64_t L, int64_t i) {
  const acc_t left = i > 0 && w[i - 1] > w[i] ? w[i - 1] : w[i];
  const acc_t right = i + 1 < L && w[i + 1] > w[i] ? w[i + 1] : w[i];
  return (left + right) / acc_t(2);
}

// n depths for ray r from sorted uniforms u in [0, 1]: inverse transform sampling of the
// piecewise-linear CDF over the depth midpoints, with EG3D's constants (+0.01 after smoothing,
// +1e-5 before normalising, denominators under 1e-5 replaced by 1) and its index alignment (the
// interior smoothed weights 1 .. L-2 over bins 0 .. L-2). Sorted u walk the CDF once.
template <typename acc_t>
OMNIFAST_HD void importance_sample_ray(const SamplingShape& s, const acc_t* depths,
                                       const acc_t* weights, const acc_t* u, acc_t* out,
                                       int64_t r) {
  const acc_t* z = depths + r * s.samples;
  const acc_t* w = weights + r * s.weights;
  const int64_t bins = s.weights - 2;  // pdf entries; CDF entries 0 .. bins
  auto pdf_weight = [&](int64_t k) {
    return (smoothed_weight(w, s.weights, k + 1) + acc_t(0.01)) + acc_t(1e-5);
  };
  auto mid_depth = [&](int64_t k) { return acc_t(0.5) * (z[k] + z[k + 1]); };
  acc_t total = acc_t(0);
  for (int64_t k = 0; k < bins; ++k) total += pdf_weight(k);
  int64_t i = 0;                                // first CDF index whose value exceeds u
  acc_t cdf_i = acc_t(0), cdf_prev = acc_t(0);  // cdf[i] (while i <= bins) and cdf[i - 1]
  for (int64_t j = 0; j < s.draws; ++j) {
    const acc_t uj = u[r * s.draws + j];
    while (i <= bins && cdf_i <= uj) {
      cdf_prev = cdf_i;
      ++i;
      if (i <= bins) cdf_i = cdf_prev + pdf_weight(i - 1) / total;
    }
    const int64_t below = i > 0 ? i - 1 : 0, above = i < bins ? i : bins;
    const acc_t cdf_lo = i > 0 ? cdf_prev : cdf_i;
    const acc_t cdf_hi = i <= bins ? cdf_i : cdf_prev;
    acc_t denom = cdf_hi - cdf_lo;
    if (denom < acc_t(1e-5)) denom = acc_t(1);
    const acc_t lo = mid_depth(below), hi = mid_depth(above);
    out[r * s.draws + j] = lo + (uj - cdf_lo) / denom * (hi - lo);
  }
}

// Positions in cat(coarse, fine) of the merged, sorted sequence of ray r; coarse first on ties.
template <typename acc_t>
OMNIFAST_HD void merge_order_ray(int64_t coarse_count, int64_t fine_count, const acc_t* coarse,
                                 const acc_t* fine, int64_t* order, int64_t r) {
  const acc_t* c = coarse + r * coarse_count;
  const acc_t* f = fine + r * fine_count;
  int64_t* o = order + r * (coarse_count + fine_count);
  int64_t i = 0, j = 0;
  while (i < coarse_count || j < fine_count) {
    const bool take_coarse = j >= fine_count || (i < coarse_count && !(f[j] < c[i]));
    *o++ = take_coarse ? i++ : coarse_count + j++;
  }
}

}  // namespace omnifast
