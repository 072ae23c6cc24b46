// Tri-plane sampling math, written once for the CPU loops and the CUDA kernels.
//
// Planes are stored feature-last: element (n, p, d, y, x, c) at
// ((((n * 3 + p) * D + d) * H + y) * W + x) * C + c, with D = 1 for flat planes. A texel's C
// channels are then one contiguous run, which both backends read as a unit.
//
// Sampling follows grid_sample(mode=bilinear/trilinear, padding_mode=zeros, align_corners=False):
// grid coordinate g = coord[axis] * scale[axis], pixel position ((g + 1) * size - 1) / 2, corners
// floor and floor + 1, out-of-range corners contribute nothing, weights are not renormalised.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/host_device.h"

namespace omnifast {

enum TriplaneReduce : int { kReduceNone = 0, kReduceSum = 1, kReduceMean = 2 };

// Everything about one call that is not a pointer: sizes, axis binding, scaling, reduction.
struct TriplaneShape {
  int64_t batch;     // N
  int64_t points;    // M
  int64_t channels;  // C
  int64_t size[3];   // W, H, D (D = 1 for flat planes); grid axis a reads size[a]
  int dims;          // 2 (bilinear planes) or 3 (trilinear volumes)
  int axes[3][3];    // axes[plane][grid axis] = coordinate component feeding that grid axis
  double scale[3];   // per coordinate component, 2 / box_warp
  int reduce;        // TriplaneReduce
};

// Element strides of a logical [N, 3, M, C] tensor with unit channel stride; a reduced
// [N, M, C] tensor has plane = 0, so every plane reads the same row.
struct PointStrides {
  int64_t batch, plane, point;
};

// Element strides of the [N, M, 3] coordinate tensor.
struct CoordStrides {
  int64_t batch, point, component;
};

// One corner of the interpolation stencil: its weight and, as asked for, the weight's first and
// second derivatives with respect to the three world coordinates (chain rule through the box
// scaling and the pixel mapping included).
template <typename acc_t>
struct Corner {
  int64_t texel;  // texel index into the feature-last planes (multiply by C for the element)
  acc_t w;
  acc_t dw[3];
  acc_t d2w[3][3];
};

// Where a point falls on one plane: per grid axis the lower corner index, the fraction towards
// the upper one and d(pixel position)/d(world coordinate). `inside` is false when every corner
// lies outside (or the coordinate is NaN/inf); otherwise at least one corner is in range.
template <int DIMS, typename acc_t>
struct PlanePosition {
  bool inside;
  int comp[DIMS];  // the coordinate component feeding each grid axis
  int64_t base[DIMS];
  acc_t frac[DIMS];
  acc_t jac[DIMS];
};

template <int DIMS, typename acc_t>
OMNIFAST_HD PlanePosition<DIMS, acc_t> locate(const TriplaneShape& s, int plane,
                                              const acc_t xyz[3]) {
  PlanePosition<DIMS, acc_t> pos;
  pos.inside = true;
  OMNIFAST_UNROLL
  for (int a = 0; a < DIMS; ++a) {
    pos.comp[a] = s.axes[plane][a];
    acc_t coord = xyz[0], scale = static_cast<acc_t>(s.scale[0]);
    if (pos.comp[a] == 1) coord = xyz[1], scale = static_cast<acc_t>(s.scale[1]);
    if (pos.comp[a] == 2) coord = xyz[2], scale = static_cast<acc_t>(s.scale[2]);
    const acc_t size = static_cast<acc_t>(s.size[a]);
    const acc_t pix = ((coord * scale + acc_t(1)) * size - acc_t(1)) / acc_t(2);
    // Checked before the cast, which keeps the integer conversion defined for any input.
    if (!(pix >= acc_t(-1) && pix < size)) {
      pos.inside = false;
      return pos;
    }
    const acc_t lower = floor_of(pix);
    pos.base[a] = static_cast<int64_t>(lower);
    pos.frac[a] = pix - lower;
    pos.jac[a] = scale * size / acc_t(2);
  }
  return pos;
}

// Calls visit(corner) for each in-range corner of `plane` at world point xyz, in grid_sample's
// order (x fastest). ORDER 0 fills w, 1 adds dw, 2 adds d2w. Multilinear weights have no pure
// second derivative, so d2w holds only the cross terms of two different grid axes.
template <int DIMS, int ORDER, typename acc_t, typename Visit>
OMNIFAST_HD void visit_corners(const TriplaneShape& s, int64_t n, int plane, const acc_t xyz[3],
                               Visit&& visit) {
  const PlanePosition<DIMS, acc_t> pos = locate<DIMS>(s, plane, xyz);
  if (!pos.inside) return;
  const int* comp = pos.comp;
  const int64_t* base = pos.base;
  const acc_t* frac = pos.frac;
  const acc_t* jac = pos.jac;
  const int64_t plane_texel0 = (n * 3 + plane) * s.size[2] * s.size[1] * s.size[0];
  OMNIFAST_UNROLL
  for (int k = 0; k < (1 << DIMS); ++k) {
    bool inside = true;
    int64_t idx[3] = {0, 0, 0};
    acc_t w1[DIMS];
    acc_t dw1[DIMS];
    OMNIFAST_UNROLL
    for (int a = 0; a < DIMS; ++a) {
      const int bit = (k >> a) & 1;
      idx[a] = base[a] + bit;
      inside = inside && idx[a] >= 0 && idx[a] < s.size[a];
      w1[a] = bit ? frac[a] : acc_t(1) - frac[a];
      dw1[a] = bit ? jac[a] : -jac[a];
    }
    if (!inside) continue;
    Corner<acc_t> c;
    c.texel = plane_texel0 + (idx[2] * s.size[1] + idx[1]) * s.size[0] + idx[0];
    c.w = acc_t(1);
    OMNIFAST_UNROLL
    for (int a = 0; a < DIMS; ++a) c.w *= w1[a];
    // Indices into dw/d2w stay compile-time constants (comp[] is compared, never used as an
    // index) and the updates are selects, not conditional stores, so that nvcc keeps the corner
    // in registers (a conditional store to an element is an indexed local-memory store).
    if (ORDER >= 1) {
      OMNIFAST_UNROLL
      for (int j = 0; j < 3; ++j) c.dw[j] = acc_t(0);
      OMNIFAST_UNROLL
      for (int a = 0; a < DIMS; ++a) {
        acc_t d = dw1[a];
        OMNIFAST_UNROLL
        for (int b = 0; b < DIMS; ++b)
          if (b != a) d *= w1[b];
        OMNIFAST_UNROLL
        for (int j = 0; j < 3; ++j) c.dw[j] = comp[a] == j ? d : c.dw[j];
      }
    }
    if (ORDER >= 2) {
      OMNIFAST_UNROLL
      for (int i = 0; i < 3; ++i) OMNIFAST_UNROLL
      for (int j = 0; j < 3; ++j) c.d2w[i][j] = acc_t(0);
      OMNIFAST_UNROLL
      for (int a = 0; a < DIMS; ++a) OMNIFAST_UNROLL
      for (int b = a + 1; b < DIMS; ++b) {
        acc_t d = dw1[a] * dw1[b];
        OMNIFAST_UNROLL
        for (int e = 0; e < DIMS; ++e)
          if (e != a && e != b) d *= w1[e];
        OMNIFAST_UNROLL
        for (int i = 0; i < 3; ++i) OMNIFAST_UNROLL
        for (int j = 0; j < 3; ++j) {
          const bool pair = (comp[a] == i && comp[b] == j) || (comp[a] == j && comp[b] == i);
          c.d2w[i][j] = pair ? d : c.d2w[i][j];
        }
      }
    }
    visit(c);
  }
}

template <typename acc_t, typename coord_t>
OMNIFAST_HD void load_point(const coord_t* coords, CoordStrides cs, int64_t n, int64_t m,
                            acc_t xyz[3]) {
  const coord_t* p = coords + n * cs.batch + m * cs.point;
  OMNIFAST_UNROLL
  OMNIFAST_UNROLL
  for (int k = 0; k < 3; ++k) xyz[k] = load_as<acc_t>(p[k * cs.component]);
}

// What a point's features, coordinate gradient and double-backward outputs start from: 0, or
// NaN for a point with a non-finite coordinate, which then reads nothing and writes no plane
// gradient but shows as NaN downstream (as grid_sample's NaN does) instead of as zero features.
template <typename acc_t>
OMNIFAST_HD acc_t point_start(const acc_t xyz[3]) {
  return is_finite(xyz[0]) && is_finite(xyz[1]) && is_finite(xyz[2]) ? acc_t(0) : nan_of<acc_t>();
}

// Factor applied to the plane sum: 1/3 for the mean, 1 otherwise.
template <typename acc_t>
OMNIFAST_HD acc_t reduce_factor(const TriplaneShape& s) {
  return s.reduce == kReduceMean ? acc_t(1) / acc_t(3) : acc_t(1);
}

// The channels one worker handles: chunks of VEC consecutive channels, starting at chunk
// `first` and stepping by `step` chunks (CPU: first 0, step 1; CUDA: one lane of a point's group).
struct ChunkRange {
  int64_t first, step;
};

// Up to VEC channels of one texel, in the accumulation type. On the device a whole float32 chunk
// at a 16-byte boundary (the channel count a multiple of 4) is one 16-byte load.
template <int VEC, typename scalar_t, typename acc_t>
OMNIFAST_HD void load_chunk(const scalar_t* src, int nch, acc_t out[VEC]) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<scalar_t, float>::value && VEC == 4) {
    if (nch == 4 && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
      const float4 x = *reinterpret_cast<const float4*>(src);
      out[0] = x.x, out[1] = x.y, out[2] = x.z, out[3] = x.w;
      return;
    }
  }
#endif
  OMNIFAST_CHANNEL_LOOP(v, nch, VEC) out[v] = load_as<acc_t>(src[v]);
}

// ---------------------------------------------------------------------------------------------
// Forward: out[n, (p), m, c] = factor * sum_p sum_corners w * planes[corner, c].
template <int DIMS, int VEC, typename scalar_t, typename acc_t>
OMNIFAST_HD void triplane_forward_point(const TriplaneShape& s, const scalar_t* planes,
                                        const acc_t* coords, CoordStrides cs, scalar_t* out,
                                        int64_t n, int64_t m, ChunkRange chunks) {
  acc_t xyz[3];
  load_point(coords, cs, n, m, xyz);
  const acc_t start = point_start(xyz);
  const int64_t C = s.channels;
  const acc_t factor = reduce_factor<acc_t>(s);
  for (int64_t c0 = chunks.first * VEC; c0 < C; c0 += chunks.step * VEC) {
    const int nch = C - c0 < VEC ? static_cast<int>(C - c0) : VEC;
    acc_t acc[VEC];
    OMNIFAST_UNROLL
    for (int v = 0; v < VEC; ++v) acc[v] = start;
    OMNIFAST_UNROLL
    for (int p = 0; p < 3; ++p) {
      visit_corners<DIMS, 0>(s, n, p, xyz, [&](const Corner<acc_t>& k) {
        acc_t texel[VEC];
        load_chunk<VEC>(planes + k.texel * C + c0, nch, texel);
        OMNIFAST_CHANNEL_LOOP(v, nch, VEC) acc[v] += k.w * texel[v];
      });
      if (s.reduce == kReduceNone) {
        scalar_t* dst = out + ((n * 3 + p) * s.points + m) * C + c0;
        OMNIFAST_CHANNEL_LOOP(v, nch, VEC) {
          dst[v] = store_as<scalar_t>(acc[v]);
          acc[v] = start;
        }
      }
    }
    if (s.reduce != kReduceNone) {
      scalar_t* dst = out + (n * s.points + m) * C + c0;
      OMNIFAST_CHANNEL_LOOP(v, nch, VEC) dst[v] = store_as<scalar_t>(acc[v] * factor);
    }
  }
}

// Loads the upstream gradient of one plane's chunk, with the reduction factor folded in.
template <int VEC, typename scalar_t, typename acc_t>
OMNIFAST_HD void load_grad_chunk(const scalar_t* grad, PointStrides gs, int64_t n, int p, int64_t m,
                                 int64_t c0, int nch, acc_t factor, acc_t g[VEC]) {
  const scalar_t* src = grad + n * gs.batch + p * gs.plane + m * gs.point + c0;
  OMNIFAST_CHANNEL_LOOP(v, nch, VEC) g[v] = factor * load_as<acc_t>(src[v]);
}

// Per-channel partial sums of a point's coordinate gradient: elementwise multiply-adds in the
// corner loops (which vectorise), one horizontal sum per chunk at the end.
template <int VEC, typename acc_t>
struct CoordGradPartial {
  acc_t sum[3][VEC];

  OMNIFAST_HD void zero() {
    OMNIFAST_UNROLL
    for (int j = 0; j < 3; ++j) OMNIFAST_UNROLL
    for (int v = 0; v < VEC; ++v) sum[j][v] = acc_t(0);
  }

  OMNIFAST_HD void add_to(acc_t grad_xyz[3]) const {
    OMNIFAST_UNROLL
    for (int j = 0; j < 3; ++j) OMNIFAST_UNROLL
    for (int v = 0; v < VEC; ++v) grad_xyz[j] += sum[j][v];
  }
};

// ---------------------------------------------------------------------------------------------
// Backward of the forward for planes [plane_begin, plane_end) of one point:
// - returns the point's partial coordinate gradient over this worker's channels in grad_xyz
//   (when want_coords; the caller sums the partials of a point's workers),
// - adds w * g into grad_planes through add(ptr, values, count) (when grad_planes is not null).
template <int DIMS, int VEC, typename scalar_t, typename acc_t, typename Add>
OMNIFAST_HD void triplane_backward_point(const TriplaneShape& s, const scalar_t* grad_out,
                                         PointStrides gs, const scalar_t* planes,
                                         const acc_t* coords, CoordStrides cs, acc_t* grad_planes,
                                         bool want_coords, acc_t grad_xyz[3], int64_t n, int64_t m,
                                         int plane_begin, int plane_end, ChunkRange chunks,
                                         Add&& add) {
  acc_t xyz[3];
  load_point(coords, cs, n, m, xyz);
  grad_xyz[0] = grad_xyz[1] = grad_xyz[2] = point_start(xyz);
  const int64_t C = s.channels;
  const acc_t factor = reduce_factor<acc_t>(s);
  CoordGradPartial<VEC, acc_t> partial;
  for (int64_t c0 = chunks.first * VEC; c0 < C; c0 += chunks.step * VEC) {
    const int nch = C - c0 < VEC ? static_cast<int>(C - c0) : VEC;
    if (want_coords) partial.zero();
    OMNIFAST_UNROLL
    for (int p = 0; p < 3; ++p) {  // constant bounds: unrolled, so s.axes[p] is a static read
      if (p < plane_begin || p >= plane_end) continue;
      acc_t g[VEC];
      load_grad_chunk<VEC>(grad_out, gs, n, p, m, c0, nch, factor, g);
      visit_corners<DIMS, 1>(s, n, p, xyz, [&](const Corner<acc_t>& k) {
        if (want_coords) {
          acc_t texel[VEC];
          load_chunk<VEC>(planes + k.texel * C + c0, nch, texel);
          OMNIFAST_CHANNEL_LOOP(v, nch, VEC) {
            const acc_t gp = g[v] * texel[v];
            partial.sum[0][v] += k.dw[0] * gp;
            partial.sum[1][v] += k.dw[1] * gp;
            partial.sum[2][v] += k.dw[2] * gp;
          }
        }
        if (grad_planes != nullptr) {
          acc_t val[VEC];
          OMNIFAST_CHANNEL_LOOP(v, nch, VEC) val[v] = k.w * g[v];
          add(grad_planes + k.texel * C + c0, val, nch);
        }
      });
    }
    if (want_coords) partial.add_to(grad_xyz);
  }
}

// ---------------------------------------------------------------------------------------------
// Double backward. The backward maps (g = grad_out, P = planes, x = coords) to
//   Gp = scatter(factor * g * w(x)),  Gc_j = factor * sum <g, P[corner]> dw_j(x).
// Given cotangents Q (of Gp, may be null) and a (of Gc, may be null) it returns
//   d/dg : factor * sum (w Q + (a . dw) P)             -> grad_grad_out (written per chunk)
//   d/dP : scatter(factor * g * (a . dw))              -> grad_planes (through add)
//   d/dx : factor * sum <g,Q> dw + <g,P> (d2w a)       -> grad_xyz (partial, as above)
template <int DIMS, int VEC, typename scalar_t, typename acc_t, typename Add>
OMNIFAST_HD void triplane_double_backward_point(
    const TriplaneShape& s, const scalar_t* grad_out, PointStrides gs, const scalar_t* planes,
    const acc_t* coords, CoordStrides cs, const scalar_t* gg_planes, const acc_t* gg_coords,
    CoordStrides ggcs, scalar_t* grad_grad_out, acc_t* grad_planes, bool want_coords,
    acc_t grad_xyz[3], int64_t n, int64_t m, int plane_begin, int plane_end, ChunkRange chunks,
    Add&& add) {
  acc_t xyz[3];
  load_point(coords, cs, n, m, xyz);
  acc_t a[3] = {acc_t(0), acc_t(0), acc_t(0)};
  if (gg_coords != nullptr) load_point(gg_coords, ggcs, n, m, a);
  const acc_t start = point_start(xyz);
  grad_xyz[0] = grad_xyz[1] = grad_xyz[2] = start;
  const int64_t C = s.channels;
  const acc_t factor = reduce_factor<acc_t>(s);
  const bool need_planes = gg_coords != nullptr;  // P enters only through the a-terms
  CoordGradPartial<VEC, acc_t> partial;
  for (int64_t c0 = chunks.first * VEC; c0 < C; c0 += chunks.step * VEC) {
    const int nch = C - c0 < VEC ? static_cast<int>(C - c0) : VEC;
    if (want_coords) partial.zero();
    acc_t ggo[VEC];
    OMNIFAST_UNROLL
    for (int v = 0; v < VEC; ++v) ggo[v] = start;
    OMNIFAST_UNROLL
    for (int p = 0; p < 3; ++p) {  // constant bounds: unrolled, so s.axes[p] is a static read
      if (p < plane_begin || p >= plane_end) continue;
      acc_t g[VEC];
      load_grad_chunk<VEC>(grad_out, gs, n, p, m, c0, nch, factor, g);
      visit_corners<DIMS, 2>(s, n, p, xyz, [&](const Corner<acc_t>& k) {
        const acc_t a_dw = a[0] * k.dw[0] + a[1] * k.dw[1] + a[2] * k.dw[2];
        acc_t pv[VEC];
        acc_t qv[VEC];
        OMNIFAST_CHANNEL_LOOP(v, nch, VEC) {
          pv[v] = need_planes ? load_as<acc_t>(planes[k.texel * C + c0 + v]) : acc_t(0);
          qv[v] = gg_planes != nullptr ? load_as<acc_t>(gg_planes[k.texel * C + c0 + v]) : acc_t(0);
        }
        if (grad_grad_out != nullptr)
          OMNIFAST_CHANNEL_LOOP(v, nch, VEC) ggo[v] += k.w * qv[v] + a_dw * pv[v];
        if (grad_planes != nullptr && need_planes) {
          acc_t val[VEC];
          OMNIFAST_CHANNEL_LOOP(v, nch, VEC) val[v] = a_dw * g[v];
          add(grad_planes + k.texel * C + c0, val, nch);
        }
        if (want_coords) {
          acc_t d2w_a[3];
          OMNIFAST_UNROLL
          for (int j = 0; j < 3; ++j)
            d2w_a[j] = k.d2w[j][0] * a[0] + k.d2w[j][1] * a[1] + k.d2w[j][2] * a[2];
          OMNIFAST_CHANNEL_LOOP(v, nch, VEC) {
            const acc_t gq = g[v] * qv[v];
            const acc_t gp = g[v] * pv[v];
            partial.sum[0][v] += k.dw[0] * gq + d2w_a[0] * gp;
            partial.sum[1][v] += k.dw[1] * gq + d2w_a[1] * gp;
            partial.sum[2][v] += k.dw[2] * gq + d2w_a[2] * gp;
          }
        }
      });
      if (grad_grad_out != nullptr && s.reduce == kReduceNone) {
        scalar_t* dst = grad_grad_out + ((n * 3 + p) * s.points + m) * C + c0;
        OMNIFAST_CHANNEL_LOOP(v, nch, VEC) {
          dst[v] = store_as<scalar_t>(ggo[v]);
          ggo[v] = start;
        }
      }
    }
    if (grad_grad_out != nullptr && s.reduce != kReduceNone) {
      scalar_t* dst = grad_grad_out + (n * s.points + m) * C + c0;
      OMNIFAST_CHANNEL_LOOP(v, nch, VEC) dst[v] = store_as<scalar_t>(ggo[v] * factor);
    }
    if (want_coords) partial.add_to(grad_xyz);
  }
}

// ---------------------------------------------------------------------------------------------
// Plane gradients without atomics, in a fixed order (the deterministic path).
//
// Every (point, plane) gets the key of the texel row (d, y) of its lowest corner; sorting the
// keys stably groups the points by row and keeps them in point order within a row. A worker that
// owns one gradient row then walks the 2 (planes) or 4 (volumes) groups whose corners reach its
// row and adds only inside it: no two workers write the same element, and each element's sum
// has the same order in every run.

// Keys per plane: rows of lowest corners, (D + 1) x (H + 1) with the "-1" rows included, plus
// one for points with no corner on the plane (sorted last and never read).
OMNIFAST_HD int64_t row_keys_per_plane(const TriplaneShape& s) {
  return (s.dims == 3 ? s.size[2] + 1 : 1) * (s.size[1] + 1) + 1;
}

template <int DIMS, typename acc_t>
OMNIFAST_HD int64_t lowest_row_key(const TriplaneShape& s, int plane, const acc_t xyz[3]) {
  const PlanePosition<DIMS, acc_t> pos = locate<DIMS>(s, plane, xyz);
  if (!pos.inside) return row_keys_per_plane(s) - 1;
  const int64_t depth_row = DIMS == 3 ? pos.base[DIMS - 1] + 1 : 0;
  return depth_row * (s.size[1] + 1) + pos.base[1] + 1;
}

// Sort key of point m on plane p of image n: plane-major, then row. The plane is dispatched to
// constants, so that the shape's axes are read at static indices (a runtime index would copy
// the whole shape to local memory on the device).
template <int DIMS, typename acc_t>
OMNIFAST_HD int64_t row_sort_key(const TriplaneShape& s, const acc_t* coords, CoordStrides cs,
                                 int64_t n, int p, int64_t m) {
  acc_t xyz[3];
  load_point(coords, cs, n, m, xyz);
  const int64_t row = p == 0   ? lowest_row_key<DIMS>(s, 0, xyz)
                      : p == 1 ? lowest_row_key<DIMS>(s, 1, xyz)
                               : lowest_row_key<DIMS>(s, 2, xyz);
  return (n * 3 + p) * row_keys_per_plane(s) + row;
}

// Adds only inside [begin, end): the elements of the row a worker owns.
template <int VEC, typename acc_t>
struct RowAdd {
  acc_t* begin;
  acc_t* end;
  OMNIFAST_HD void operator()(acc_t* dst, const acc_t* val, int count) const {
    if (dst < begin || dst >= end) return;
    OMNIFAST_CHANNEL_LOOP(v, count, VEC) dst[v] += val[v];
  }
};

// Calls add_point(n, p, m, row_add) for every point whose corners reach gradient row `row`
// (flat over N x 3 x D x H), in a fixed order. `order` lists flat (n * 3 + p) * M + m indices
// sorted stably by row_sort_key; `key_start[k]` is the first position of key k.
template <int DIMS, int VEC, typename acc_t, typename AddPoint>
OMNIFAST_HD void walk_row(const TriplaneShape& s, int64_t row, const int64_t* order,
                          const int64_t* key_start, acc_t* grad_planes, AddPoint&& add_point) {
  const int64_t H = s.size[1], D = s.size[2];
  const int64_t y = row % H, d = (row / H) % D, np = row / (H * D);
  const int64_t row_elements = s.size[0] * s.channels;
  acc_t* row_begin = grad_planes + row * row_elements;
  const RowAdd<VEC, acc_t> row_add{row_begin, row_begin + row_elements};
  const int64_t plane_key0 = np * row_keys_per_plane(s);
  // Not unrolled: each copy would repeat the whole per-point body (compile time, code size).
  OMNIFAST_NO_UNROLL
  for (int dd = 0; dd < (DIMS == 3 ? 2 : 1); ++dd) OMNIFAST_NO_UNROLL
  for (int dy = 0; dy < 2; ++dy) {
    // Lowest-corner rows (d - dd, y - dy) reach row (d, y); keys shift both by one.
    const int64_t depth_row = DIMS == 3 ? d - dd + 1 : 0;
    const int64_t key = plane_key0 + depth_row * (H + 1) + (y - dy + 1);
    for (int64_t i = key_start[key]; i < key_start[key + 1]; ++i)
      add_point(np / 3, static_cast<int>(np % 3), order[i] % s.points, row_add);
  }
}

}  // namespace omnifast
