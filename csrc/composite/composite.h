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
// and dL/dtau_k = exp(-tau_k) dL/dalpha_k. T_k is rebuilt backwards from the ray's sum of log t
// (saved by the forward, in double), so opaque rays whose transmittance underflows stay exact.
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

template <typename acc_t>
OMNIFAST_HD Density<acc_t> raw_density(int field, acc_t value, acc_t beta, acc_t delta) {
  Density<acc_t> d{value + delta, acc_t(1), acc_t(0)};
  if (field == kFieldSdf) {
    // sigmoid(-s / beta) / beta, as OmniAvatar's sdf_activation(-s). The sigmoid and its
    // complement both come from exp(-|u|), so neither loses precision as the other nears 1.
    const acc_t u = value / beta;
    const acc_t e = exp_of(u < acc_t(0) ? u : -u);
    const acc_t small = e / (acc_t(1) + e), large = acc_t(1) / (acc_t(1) + e);
    const acc_t sig = u > acc_t(0) ? small : large;  // sigmoid(-u)
    const acc_t rest = u > acc_t(0) ? large : small;  // 1 - sigmoid(-u)
    d.sigma = sig / beta + delta;
    d.d_field = -sig * rest / (beta * beta);
    d.d_beta = sig / (beta * beta) * (rest * u - acc_t(1));
  } else if (field == kFieldSdfLaplace) {
    // VolSDF: Laplace CDF of -s with scale beta, over beta; exp(-|s| / beta) never overflows.
    const acc_t e = exp_of(-(value < acc_t(0) ? -value : value) / beta) / acc_t(2);
    const acc_t psi = value >= acc_t(0) ? e : acc_t(1) - e;
    d.sigma = psi / beta + delta;
    d.d_field = -e / (beta * beta);
    const acc_t d_psi_d_beta = e * value / (beta * beta);  // the same on both branches
    d.d_beta = d_psi_d_beta / beta - psi / (beta * beta);
  }
  return d;
}

// softplus(x - 1) with PyTorch's threshold of 20, and its derivative, from one exp.
template <typename acc_t>
struct Softplus {
  acc_t value, grad;
};

template <typename acc_t>
OMNIFAST_HD Softplus<acc_t> shifted_softplus(acc_t x) {
  const acc_t y = x - acc_t(1);
  if (y > acc_t(20)) return {y, acc_t(1)};
  const acc_t z = exp_of(y);
  return {log1p_of(z), z / (z + acc_t(1))};
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

// Interval k of a ray from the raw densities of samples k and k + 1 (the latter unused by the
// absorption layout); z points at the ray's depths.
template <typename acc_t>
OMNIFAST_HD Interval<acc_t> make_interval(const CompositeShape& s, const acc_t* z, int64_t k,
                                          acc_t sigma_k, acc_t sigma_next) {
  Interval<acc_t> iv;
  const acc_t z0 = z[k];
  if (s.mode == kModeMidpoint) {
    const acc_t z1 = z[k + 1];
    iv.sigma = (sigma_k + sigma_next) / acc_t(2);
    iv.depth = (z0 + z1) / acc_t(2);
    iv.length = z1 - z0;
    iv.first = k;
    iv.second = k + 1;
  } else {
    iv.sigma = sigma_k;
    iv.depth = z0;
    iv.length = k + 1 < s.samples ? z[k + 1] - z0 : acc_t(1e10);
    iv.first = iv.second = k;
  }
  return iv;
}

// Walks a ray's intervals in order, tracking transmittance exactly as the reference's cumprod.
template <typename scalar_t, typename acc_t>
struct RayWalk {
  const CompositeShape& s;
  const CompositeInputs<scalar_t, acc_t>& in;
  int64_t base;          // r * S
  acc_t transmittance;   // T_k before interval k
  acc_t sigma;           // raw density of the interval's first sample

  OMNIFAST_HD RayWalk(const CompositeShape& shape, const CompositeInputs<scalar_t, acc_t>& inputs,
                      int64_t ray)
      : s(shape), in(inputs), base(ray * shape.samples), transmittance(acc_t(1)),
        sigma(sample_density(shape, inputs, ray * shape.samples).sigma) {}

  OMNIFAST_HD Interval<acc_t> interval(int64_t k) {
    const acc_t next =
        k + 1 < s.samples ? sample_density(s, in, base + k + 1).sigma : acc_t(0);
    const Interval<acc_t> iv = make_interval(s, in.depths + base, k, sigma, next);
    sigma = next;
    return iv;
  }
};

// Feature c of interval iv: the midpoint average (a + b) / 2, or the sample's own value.
template <typename scalar_t, typename acc_t>
OMNIFAST_HD acc_t interval_feature(const CompositeShape& s, const scalar_t* features,
                                   int64_t base, const Interval<acc_t>& iv, int64_t c) {
  const acc_t a = load_as<acc_t>(features[(base + iv.first) * s.channels + c]);
  if (s.mode != kModeMidpoint) return a;
  const acc_t b = load_as<acc_t>(features[(base + iv.second) * s.channels + c]);
  return (a + b) / acc_t(2);
}

// alpha, the weight, and the transmittance update of one interval.
template <typename acc_t>
struct Opacity {
  acc_t softplus, softplus_grad, tau, survival, alpha, factor, weight;
  // survival exp(-tau), factor t_k = 1 - alpha + 1e-10
};

template <typename acc_t>
OMNIFAST_HD Opacity<acc_t> opacity_of(const Interval<acc_t>& iv, acc_t transmittance) {
  Opacity<acc_t> o;
  const Softplus<acc_t> sp = shifted_softplus(iv.sigma);
  o.softplus = sp.value;
  o.softplus_grad = sp.grad;
  o.tau = o.softplus * iv.length;
  o.survival = exp_of(-o.tau);
  o.alpha = acc_t(1) - o.survival;
  o.factor = acc_t(1) - o.alpha + acc_t(1e-10);
  o.weight = o.alpha * transmittance;
  return o;
}

// Forward of one ray for this worker's channel chunks. Writes the composited features (acc
// type), and when `ray_outputs`: opacity W, the raw depth sum(w z) / W, and the weights if asked.
template <int VEC, typename scalar_t, typename acc_t>
OMNIFAST_HD void composite_forward_ray(const CompositeShape& s,
                                       const CompositeInputs<scalar_t, acc_t>& in,
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
    RayWalk<scalar_t, acc_t> walk(s, in, r);
    for (int64_t k = 0; k < L; ++k) {
      const Interval<acc_t> iv = walk.interval(k);
      const Opacity<acc_t> o = opacity_of(iv, walk.transmittance);
      walk.transmittance *= o.factor;
      product *= static_cast<double>(o.factor);
      if (product < 1e-200) {
        log_offset += log_of(product);
        product = 1;
      }
      total += o.weight;
      depth_sum += o.weight * iv.depth;
      if (ray_outputs && first_chunk && weights != nullptr) weights[r * L + k] = o.weight;
      OMNIFAST_CHANNEL_LOOP(v, nch, VEC)
        acc[v] += o.weight * interval_feature<scalar_t, acc_t>(s, in.features, walk.base, iv, c0 + v);
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
template <int VEC, typename scalar_t, typename acc_t, typename Reduce>
OMNIFAST_HD void composite_backward_ray(const CompositeShape& s,
                                        const CompositeInputs<scalar_t, acc_t>& in,
                                        const acc_t* opacity, const acc_t* depth_raw,
                                        const double* log_transmittance,
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

  double log_t = log_transmittance[r];  // log T_{k+1} as k walks down
  acc_t suffix = acc_t(0);              // R_{k+1}
  Share lower_next{acc_t(0), acc_t(0), acc_t(0)};  // lower share of interval k + 1
  // Densities of samples k and k + 1: each is evaluated once and used by both of its intervals
  // and by its own gradient.
  Density<acc_t> after = sample_density(s, in, base + S - 1);
  for (int64_t k = L - 1; k >= 0; --k) {
    const Density<acc_t> here = k + 1 < S ? sample_density(s, in, base + k) : after;
    const Interval<acc_t> iv = make_interval(s, in.depths + base, k, here.sigma, after.sigma);
    Opacity<acc_t> o = opacity_of(iv, acc_t(1));
    log_t -= log_of(static_cast<double>(o.factor));
    const acc_t T = static_cast<acc_t>(exp_of(log_t));  // T_k
    o.weight = o.alpha * T;

    acc_t dot = acc_t(0);
    for (int64_t c0 = chunks.first * VEC; c0 < C; c0 += chunks.step * VEC) {
      const int nch = C - c0 < VEC ? static_cast<int>(C - c0) : VEC;
      OMNIFAST_CHANNEL_LOOP(v, nch, VEC)
        dot += g_features[c0 + v] * interval_feature<scalar_t, acc_t>(s, in.features, base, iv,
                                                                       c0 + v);
    }
    acc_t gw = reduce(dot) + g_total + g_depth_sum * iv.depth;
    if (g.weights != nullptr) gw += g.weights[r * L + k];

    const acc_t g_alpha = T * (gw - suffix);
    suffix = gw * o.alpha + o.factor * suffix;
    const acc_t g_tau = o.survival * g_alpha;
    const acc_t g_sigma_mid = iv.length * g_tau * o.softplus_grad;
    const acc_t g_length = (!midpoint && k + 1 == S) ? acc_t(0) : o.softplus * g_tau;
    const acc_t g_depth_mid = o.weight * g_depth_sum;

    // The length z_{k+1} - z_k takes from sample k and gives to sample k + 1.
    const Share lower{share * o.weight, share * g_sigma_mid, share * g_depth_mid - g_length};
    const Share upper = midpoint ? Share{share * o.weight, share * g_sigma_mid,
                                         share * g_depth_mid + g_length}
                                 : Share{acc_t(0), acc_t(0), g_length};
    if (k + 1 < S)
      finish_sample(k + 1, after, Share{upper.weight + lower_next.weight,
                                        upper.sigma + lower_next.sigma,
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
  int64_t i = 0;                            // first CDF index whose value exceeds u
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
