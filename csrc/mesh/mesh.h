// Closest points on batches of triangle meshes, written once for the CPU loops and the CUDA
// kernels: the point-triangle test, the BVH (node layout, the bottom-up bounds pass shared by every
// builder and by refits, the linear builder's Morton keys and radix-tree nodes), the nearest-
// triangle traversal, the two signs (angle-weighted pseudonormal, fast winding number) and the
// per-mesh normals they need.
//
// The BVH is binary and keeps each child's box in its parent ("slot" 2 * node + side), so a
// traversal step reads one node to order and prune both children. A child reference >= 0 is an
// internal node; < 0 is ~code of a leaf, code = first << 4 | count over the mesh's triangles in
// leaf order (count 0: an empty slot). Node 0 is the root and always internal.
#pragma once

#include <cstdint>

#include "../common/host_device.h"

namespace omnifast {

// ---------------------------------------------------------------- small vector algebra

template <typename T>
struct Vec3 {
  T x, y, z;
};

template <typename T>
OMNIFAST_HD Vec3<T> load3(const T* p) {
  return {p[0], p[1], p[2]};
}
template <typename T>
OMNIFAST_HD void store3(T* p, const Vec3<T>& v) {
  p[0] = v.x;
  p[1] = v.y;
  p[2] = v.z;
}
template <typename T>
OMNIFAST_HD Vec3<T> operator-(const Vec3<T>& a, const Vec3<T>& b) {
  return {a.x - b.x, a.y - b.y, a.z - b.z};
}
template <typename T>
OMNIFAST_HD Vec3<T> operator+(const Vec3<T>& a, const Vec3<T>& b) {
  return {a.x + b.x, a.y + b.y, a.z + b.z};
}
template <typename T>
OMNIFAST_HD Vec3<T> operator*(T s, const Vec3<T>& a) {
  return {s * a.x, s * a.y, s * a.z};
}
template <typename T>
OMNIFAST_HD T dot(const Vec3<T>& a, const Vec3<T>& b) {
  return a.x * b.x + a.y * b.y + a.z * b.z;
}
template <typename T>
OMNIFAST_HD Vec3<T> cross(const Vec3<T>& a, const Vec3<T>& b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
template <typename T>
OMNIFAST_HD T length(const Vec3<T>& a) {
  return sqrt_of(dot(a, a));
}
template <typename T>
OMNIFAST_HD T min_of(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
OMNIFAST_HD T max_of(T a, T b) {
  return a < b ? b : a;
}

// ---------------------------------------------------------------- closest point on a triangle

// Which feature of triangle (a, b, c) holds the closest point: the face, a vertex, or an edge
// (edge k joins corners k and k + 1).
enum Region : int {
  kRegionFace = 0,
  kRegionVertexA = 1,
  kRegionVertexB = 2,
  kRegionVertexC = 3,
  kRegionEdgeAB = 4,
  kRegionEdgeBC = 5,
  kRegionEdgeCA = 6,
};

// Squared distance and barycentric weights (u, v, w) of a, b, c; point = a + v (b - a) + w (c - a).
template <typename T>
struct TriangleHit {
  T sq, u, v, w;
  int region;
};

template <typename T>
OMNIFAST_HD TriangleHit<T> vertex_hit(T sq, int corner) {
  return {sq, corner == 0 ? T(1) : T(0), corner == 1 ? T(1) : T(0), corner == 2 ? T(1) : T(0),
          kRegionVertexA + corner};
}

// Closest point on edge k (corner k -> corner k + 1) given from corner k as origin: `op` is the
// query minus corner k, `e` the edge vector. Zero-length edges give corner k.
template <typename T>
OMNIFAST_HD TriangleHit<T> edge_hit(const Vec3<T>& op, const Vec3<T>& e, int k) {
  const T ee = dot(e, e), t_raw = dot(op, e);
  const T t = ee > T(0) ? min_of(max_of(t_raw / ee, T(0)), T(1)) : T(0);
  const Vec3<T> d = op - t * e;
  if (t <= T(0)) return vertex_hit(dot(d, d), k);
  if (t >= T(1)) return vertex_hit(dot(d, d), (k + 1) % 3);
  T weights[3] = {T(0), T(0), T(0)};
  weights[k] = T(1) - t;
  weights[(k + 1) % 3] = t;
  return {dot(d, d), weights[0], weights[1], weights[2], kRegionEdgeAB + k};
}

template <typename T>
OMNIFAST_HD TriangleHit<T> nearer(const TriangleHit<T>& a, const TriangleHit<T>& b) {
  return b.sq < a.sq ? b : a;
}

// a * b - c * d to within 1.5 units of rounding (Kahan): the rounding error of c * d is
// recovered with an fma, so nearly cancelling products keep their sign and their digits.
template <typename T>
OMNIFAST_HD T diff_of_products(T a, T b, T c, T d) {
  const T cd = c * d;
  return fma_of(a, b, -cd) + fma_of(-c, d, cd);
}

template <typename T>
OMNIFAST_HD bool is_zero(const Vec3<T>& v) {
  return v.x == T(0) && v.y == T(0) && v.z == T(0);
}

// |v| without overflow or underflow in the squares.
template <typename T>
OMNIFAST_HD T scaled_length(const Vec3<T>& v) {
  const T m = max_of(max_of(abs_of(v.x), abs_of(v.y)), abs_of(v.z));
  if (!(m > T(0)) || !(m < infinity_of<T>())) return m;
  return m * length(Vec3<T>{v.x / m, v.y / m, v.z / m});
}

// The corner the longest edge of (c[0], c[1], c[2]) starts from (edge k joins k and k + 1).
template <typename T>
OMNIFAST_HD int longest_edge(const Vec3<T> c[3]) {
  int r = 0;
  T longest = T(-1);
  for (int k = 0; k < 3; ++k) {
    const Vec3<T> e = c[(k + 1) % 3] - c[k];
    if (dot(e, e) > longest) longest = dot(e, e), r = k;
  }
  return r;
}

// The unit normal of a triangle, correctly rounded however thin it is (compensated cross
// product from the start of its longest edge); zero when its edges are exactly parallel (a
// zero-area face, which has no side and takes no part in signs). Scaled before the norm so
// tiny and huge areas neither underflow nor overflow.
template <typename T>
OMNIFAST_HD Vec3<T> unit_normal(const Vec3<T>& ab, const Vec3<T>& ac) {
  const Vec3<T> n{diff_of_products(ab.y, ac.z, ab.z, ac.y),
                  diff_of_products(ab.z, ac.x, ab.x, ac.z),
                  diff_of_products(ab.x, ac.y, ab.y, ac.x)};
  const T m = max_of(max_of(abs_of(n.x), abs_of(n.y)), abs_of(n.z));
  if (!(m > T(0) && m < infinity_of<T>())) return {T(0), T(0), T(0)};
  const Vec3<T> s{n.x / m, n.y / m, n.z / m};
  return (T(1) / length(s)) * s;
}

// Corner (r + k) % 3 of c, picked with selects: a runtime index into a local array would put
// the array in local memory on the device.
template <typename T>
OMNIFAST_HD Vec3<T> corner_after(const Vec3<T> c[3], int r, int k) {
  const int j = (r + k) % 3;
  return j == 0 ? c[0] : j == 1 ? c[1] : c[2];
}

template <typename T>
OMNIFAST_HD Vec3<T> face_unit_normal(const Vec3<T> c[3]) {
  const int r = longest_edge(c);
  const Vec3<T> a = corner_after(c, r, 0);
  return unit_normal(corner_after(c, r, 1) - a, corner_after(c, r, 2) - a);
}

// A triangle as the queries read it: in an orthonormal frame (e1, e2, n) with its longest edge
// on the first axis, corner a at the origin, b = (L, 0) and c = (cx, cy). A query's frame
// coordinates feed all three in-plane side tests, so the tests agree with one another (and
// compensated products make each exact for those numbers): the closest point is exact to
// rounding however thin the triangle is. Frame corner j is the face's corner (j + rot) % 3 (a
// rotation keeps the orientation). A zero-area face (n = 0) is the segment of its longest edge.
constexpr int kTriStride = 16;  // a xyz, e1 xyz, e2 xyz, n xyz, L, cx, cy, rot

template <typename T>
OMNIFAST_HD void write_triangle(const Vec3<T>& a0, const Vec3<T>& b0, const Vec3<T>& c0, T* out) {
  const Vec3<T> corner[3] = {a0, b0, c0};
  const int r = longest_edge(corner);
  const Vec3<T> a = corner_after(corner, r, 0), ab = corner_after(corner, r, 1) - a,
                ac = corner_after(corner, r, 2) - a;
  const Vec3<T> n = unit_normal(ab, ac);
  const T length_ab = scaled_length(ab);
  const Vec3<T> e1 = length_ab > T(0)
                         ? Vec3<T>{ab.x / length_ab, ab.y / length_ab, ab.z / length_ab}
                         : Vec3<T>{T(0), T(0), T(0)};
  const Vec3<T> e2 = cross(n, e1);
  store3(out, a);
  store3(out + 3, e1);
  store3(out + 6, e2);
  store3(out + 9, n);
  out[12] = length_ab;
  out[13] = dot(ac, e1);
  out[14] = dot(ac, e2);
  out[15] = T(r);
}

template <typename T>
OMNIFAST_HD int rotation_of(const T* tri) {
  return static_cast<int>(tri[15]);
}

// Frame corner j (0: a, 1: b, 2: c) in world coordinates.
template <typename T>
OMNIFAST_HD Vec3<T> corner_of(const T* tri, int j) {
  const Vec3<T> a = load3(tri), e1 = load3(tri + 3);
  if (j == 0) return a;
  if (j == 1) return a + tri[12] * e1;
  return a + tri[13] * e1 + tri[14] * load3(tri + 6);
}

// A hit given in frame corners, renamed to the face's corners (frame corner j is face corner
// j + rot, modulo 3).
template <typename T>
OMNIFAST_HD TriangleHit<T> to_face_corners(const TriangleHit<T>& h, int rot) {
  const auto turn = [rot](int j) { return j + rot < 3 ? j + rot : j + rot - 3; };
  const T frame[3] = {h.u, h.v, h.w};
  T face[3];
  for (int j = 0; j < 3; ++j) face[turn(j)] = frame[j];
  int region = h.region;
  if (region >= kRegionEdgeAB)
    region = kRegionEdgeAB + turn(region - kRegionEdgeAB);
  else if (region >= kRegionVertexA)
    region = kRegionVertexA + turn(region - kRegionVertexA);
  return {h.sq, face[0], face[1], face[2], region};
}

// The closest point of stored triangle `tri`, with its lengths scaled by s (a power of two),
// to a query at ap = p - a with height h = ap . n over its plane, both in scaled units, with
// weights and region in frame corners (to_face_corners renames them). Inside all three edges
// the distance is the height; outside one or two, the nearest of those edges holds the closest
// point (a point is outside both edges that meet at the vertex it is nearest to).
template <typename T>
OMNIFAST_HD TriangleHit<T> closest_on_triangle(const T* tri, const Vec3<T>& ap, T h, T s) {
  const Vec3<T> e1 = load3(tri + 3), n = load3(tri + 9);
  const T L = s * tri[12], cx = s * tri[13], cy = s * tri[14];
  if (is_zero(n)) return edge_hit(ap, L * e1, 0);
  const Vec3<T> q{dot(ap, e1), dot(ap, load3(tri + 6)), h};  // the query in the frame
  const Vec3<T> b{L, T(0), T(0)}, c{cx, cy, T(0)};
  // Twice the signed areas the query's foot spans with each edge: the opposite corners' weights.
  const T wc = L * q.y, wb = diff_of_products(cy, q.x, cx, q.y);
  const T wa = diff_of_products(cx - L, q.y, cy, q.x - L);
  bool out_ab = wc < T(0), out_bc = wa < T(0), out_ca = wb < T(0);
  if (!(cy > T(0))) out_ab = out_bc = out_ca = true;  // an area below rounding: its edges
  TriangleHit<T> hit;
  if (!(out_ab || out_bc || out_ca)) {
    const T sum = wa + wb + wc;
    hit = {h * h, wa / sum, wb / sum, wc / sum, kRegionFace};
  } else {
    hit = out_ab   ? edge_hit(q, b, 0)
          : out_bc ? edge_hit(q - b, c - b, 1)
                   : edge_hit(q - c, T(-1) * c, 2);
    if (out_ab && out_bc) hit = nearer(hit, edge_hit(q - b, c - b, 1));
    if ((out_ab || out_bc) && out_ca) hit = nearer(hit, edge_hit(q - c, T(-1) * c, 2));
  }
  return hit;
}

// The closest point of a hit (frame corners) on stored triangle `tri` from query p, all lengths
// scaled by s: the foot on the plane for the interior (exact however thin the triangle), the
// weighted corners on edges and vertices.
template <typename T>
OMNIFAST_HD Vec3<T> hit_point(const T* tri, const Vec3<T>& p, const TriangleHit<T>& h, T s) {
  const Vec3<T> n = load3(tri + 9), a = s * load3(tri);
  if (h.region == kRegionFace) return p - dot(p - a, n) * n;
  return a + (s * (h.v * tri[12] + h.w * tri[13])) * load3(tri + 3) +
         (s * h.w * tri[14]) * load3(tri + 6);
}

// A coordinate the tree builders can order: non-finite ones become 0 (a mesh with such a
// vertex answers NaN to every query, whatever its tree looks like).
template <typename T>
OMNIFAST_HD T finite_or_zero(T x) {
  return is_finite(x) ? x : T(0);
}

// ---------------------------------------------------------------- the BVH

constexpr int kBvhStack = 64;     // traversal stack; builders keep trees shallower
constexpr int kBoxStride = 6;     // lo xyz, hi xyz per slot
constexpr int kDipoleStride = 8;  // area vector xyz, centroid xyz, area, radius per slot
constexpr int kLinkStride = 3;    // child 0, child 1, parent slot (-1 at the root)
constexpr int kLbvhLeafSize = 4;  // triangles per leaf of the linear builder

OMNIFAST_HD int32_t leaf_ref(int64_t first, int count) {
  return ~static_cast<int32_t>((first << 4) | count);
}
OMNIFAST_HD int64_t leaf_first(int32_t ref) { return static_cast<int64_t>(~ref) >> 4; }
OMNIFAST_HD int leaf_count(int32_t ref) { return (~ref) & 15; }

// One mesh's tree: boxes [nodes][2][6], dipoles [nodes][2][8], links [nodes][3], triangles in
// leaf order [F][kTriStride] and their face ids [F].
template <typename T>
struct BvhView {
  const T* boxes;
  const T* dipoles;
  const int32_t* links;
  const T* tris;
  const int32_t* prim_face;
};

// Squared distance from p to a box, both scaled by s.
template <typename T>
OMNIFAST_HD T box_sq_distance(const Vec3<T>& p, const T* box, T s) {
  const T dx = max_of(max_of(s * box[0] - p.x, p.x - s * box[3]), T(0));
  const T dy = max_of(max_of(s * box[1] - p.y, p.y - s * box[4]), T(0));
  const T dz = max_of(max_of(s * box[2] - p.z, p.z - s * box[5]), T(0));
  return dx * dx + dy * dy + dz * dz;
}

// Slot contents written by other CUDA threads are read past the (incoherent) L1 cache.
template <typename T>
OMNIFAST_HD T load_fresh(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);
#else
  return *p;
#endif
}

template <typename T>
OMNIFAST_HD void write_empty_slot(T* box, T* dipole) {
  for (int i = 0; i < 3; ++i) {
    box[i] = infinity_of<T>();
    box[3 + i] = -infinity_of<T>();
  }
  for (int i = 0; i < kDipoleStride; ++i) dipole[i] = T(0);
}

// Box and far-field summary (Barill et al. 2018, order 1: the area-weighted normal at the
// area-weighted centroid, with the radius of a ball around it holding every vertex) of the
// triangles of one leaf, written into the slot its parent keeps for it. The area is NaN when a
// corner is not finite.
template <typename T>
OMNIFAST_HD void summarise_leaf(const T* tris, int32_t ref, T* box, T* dipole) {
  const int64_t first = leaf_first(ref);
  const int count = leaf_count(ref);
  Vec3<T> lo{infinity_of<T>(), infinity_of<T>(), infinity_of<T>()};
  Vec3<T> hi = T(-1) * lo, area_vector{T(0), T(0), T(0)}, moment{T(0), T(0), T(0)};
  T area = T(0);
  for (int k = 0; k < count; ++k) {
    const T* t = tris + (first + k) * kTriStride;
    Vec3<T> centre{T(0), T(0), T(0)};
    bool finite = true;
    for (int corner = 0; corner < 3; ++corner) {
      const Vec3<T> v = corner_of(t, corner);
      lo = {min_of(lo.x, v.x), min_of(lo.y, v.y), min_of(lo.z, v.z)};
      hi = {max_of(hi.x, v.x), max_of(hi.y, v.y), max_of(hi.z, v.z)};
      centre = centre + v;
      finite = finite && is_finite(v.x) && is_finite(v.y) && is_finite(v.z);
    }
    const Vec3<T> half_normal = (T(0.5) * t[12] * t[14]) * load3(t + 9);
    const T a = length(half_normal);
    area_vector = area_vector + half_normal;
    moment = moment + (a / T(3)) * centre;
    // A non-finite corner makes the area NaN, which every merge carries up to the root.
    area = finite ? area + a : nan_of<T>();
  }
  const Vec3<T> centroid = area > T(0) ? (T(1) / area) * moment : T(0.5) * (lo + hi);
  T radius = T(0);
  for (int k = 0; k < 3 * count; ++k)
    radius =
        max_of(radius, length(corner_of(tris + (first + k / 3) * kTriStride, k % 3) - centroid));
  store3(box, lo);
  store3(box + 3, hi);
  store3(dipole, area_vector);
  store3(dipole + 3, centroid);
  dipole[6] = area;
  dipole[7] = radius;
}

// A node's own box and summary from its two slots, written into its parent's slot for it.
template <typename T>
OMNIFAST_HD void merge_slots(const T* boxes, const T* dipoles, T* box, T* dipole) {
  T b[2][kBoxStride], d[2][kDipoleStride];
  for (int s = 0; s < 2; ++s) {
    for (int i = 0; i < kBoxStride; ++i) b[s][i] = load_fresh(boxes + s * kBoxStride + i);
    for (int i = 0; i < kDipoleStride; ++i) d[s][i] = load_fresh(dipoles + s * kDipoleStride + i);
  }
  for (int i = 0; i < 3; ++i) {
    box[i] = min_of(b[0][i], b[1][i]);
    box[3 + i] = max_of(b[0][3 + i], b[1][3 + i]);
  }
  const T area = d[0][6] + d[1][6];
  Vec3<T> centroid = T(0.5) * (load3(box) + load3(box + 3));
  if (area > T(0))
    centroid = (T(1) / area) * (d[0][6] * load3(d[0] + 3) + d[1][6] * load3(d[1] + 3));
  T radius = T(0);
  for (int s = 0; s < 2; ++s)
    if (b[s][0] <= b[s][3])  // a non-empty slot
      radius = max_of(radius, length(load3(d[s] + 3) - centroid) + d[s][7]);
  store3(dipole, load3(d[0]) + load3(d[1]));
  store3(dipole + 3, centroid);
  dipole[6] = area;
  dipole[7] = radius;
}

// The bottom-up bounds pass from one leaf: summarise it, then climb while this path is the second
// to reach a node (`second_arrival(node)` counts arrivals), merging that node's slots into its
// parent's. Every builder and every refit runs it; CUDA runs one thread per leaf.
template <typename T, typename SecondArrival>
OMNIFAST_HD void bounds_from_leaf(T* boxes, T* dipoles, const int32_t* links, const int32_t* leaves,
                                  const T* tris, int64_t leaf, SecondArrival second_arrival) {
  if (leaf == 0 && links[1] < 0 && leaf_count(links[1]) == 0)  // a one-leaf tree's other slot
    write_empty_slot(boxes + kBoxStride, dipoles + kDipoleStride);
  int32_t slot = leaves[2 * leaf + 1];
  summarise_leaf(tris, ~leaves[2 * leaf], boxes + slot * kBoxStride,
                 dipoles + slot * kDipoleStride);
  while (true) {
    const int32_t node = slot >> 1;
    if (!second_arrival(node)) return;
    slot = links[kLinkStride * node + 2];
    if (slot < 0) return;  // the root: nothing above it keeps its box
    merge_slots(boxes + 2 * node * kBoxStride, dipoles + 2 * node * kDipoleStride,
                boxes + slot * kBoxStride, dipoles + slot * kDipoleStride);
  }
}

// ---------------------------------------------------------------- linear BVH (Karras 2012)

OMNIFAST_HD uint32_t spread_bits(uint32_t v) {  // 10 bits -> every third bit of 30
  v = (v * 0x00010001u) & 0xFF0000FFu;
  v = (v * 0x00000101u) & 0x0F00F00Fu;
  v = (v * 0x00000011u) & 0xC30C30C3u;
  v = (v * 0x00000005u) & 0x49249249u;
  return v;
}

// 30-bit Morton code of a point of the box [lo, lo + extent].
template <typename T>
OMNIFAST_HD uint32_t morton_code(const Vec3<T>& p, const Vec3<T>& lo, const Vec3<T>& extent) {
  const T q[3] = {extent.x > T(0) ? (p.x - lo.x) / extent.x : T(0),
                  extent.y > T(0) ? (p.y - lo.y) / extent.y : T(0),
                  extent.z > T(0) ? (p.z - lo.z) / extent.z : T(0)};
  uint32_t code = 0;
  for (int i = 0; i < 3; ++i) {
    const T cell = min_of(max_of(q[i] * T(1024), T(0)), T(1023));
    code |= spread_bits(static_cast<uint32_t>(cell)) << (2 - i);
  }
  return code;
}

OMNIFAST_HD int leading_zeros(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __clz(static_cast<int>(x));
#else
  return x == 0 ? 32 : __builtin_clz(x);
#endif
}

// The sorted keys of one mesh (mesh << 32 | Morton code, one per triangle), read per leaf: leaf
// j's key is that of its first triangle; equal keys are told apart by leaf index.
struct LeafKeys {
  const int64_t* sorted;
  int64_t leaves;
  OMNIFAST_HD uint32_t key(int64_t j) const {
    return static_cast<uint32_t>(static_cast<uint64_t>(sorted[j * kLbvhLeafSize]) & 0xffffffffu);
  }
  // Length of the common prefix of leaves i and j; -1 outside the mesh.
  OMNIFAST_HD int prefix(int64_t i, int64_t j) const {
    if (j < 0 || j >= leaves) return -1;
    const uint32_t a = key(i), b = key(j);
    return a != b ? leading_zeros(a ^ b) : 32 + leading_zeros(static_cast<uint32_t>(i ^ j));
  }
};

OMNIFAST_HD int32_t lbvh_leaf_ref(int64_t leaf, int64_t triangles) {
  const int64_t first = leaf * kLbvhLeafSize;
  const int64_t count = triangles - first < kLbvhLeafSize ? triangles - first : kLbvhLeafSize;
  return leaf_ref(first, static_cast<int>(count));
}

// Links one child into internal node `node`'s `side`: a leaf's code and parent, or a node's parent.
OMNIFAST_HD void attach_child(int32_t* links, int32_t* leaves, int64_t node, int side,
                              int64_t child, bool is_leaf, int64_t triangles) {
  const int32_t slot = static_cast<int32_t>(2 * node + side);
  if (is_leaf) {
    const int32_t ref = lbvh_leaf_ref(child, triangles);
    links[kLinkStride * node + side] = ref;
    leaves[2 * child] = ~ref;
    leaves[2 * child + 1] = slot;
  } else {
    links[kLinkStride * node + side] = static_cast<int32_t>(child);
    links[kLinkStride * child + 2] = slot;
  }
}

// Internal node i of the radix tree over `k.leaves` sorted leaves (Karras 2012, section 4): its
// key range from the prefix lengths of its neighbours, then the split by binary search. Writes its
// children's links; the root (i = 0) also writes its own. A single leaf hangs under a root whose
// other slot is empty (its box and summary are written by the caller).
OMNIFAST_HD void lbvh_node(const LeafKeys& k, int64_t i, int64_t triangles, int32_t* links,
                           int32_t* leaves) {
  if (i == 0) links[2] = -1;
  if (k.leaves == 1) {
    attach_child(links, leaves, 0, 0, 0, true, triangles);
    links[1] = leaf_ref(0, 0);
    return;
  }
  const int64_t d = k.prefix(i, i + 1) - k.prefix(i, i - 1) > 0 ? 1 : -1;
  const int below = k.prefix(i, i - d);
  int64_t span = 2;
  while (k.prefix(i, i + span * d) > below) span *= 2;
  int64_t length = 0;
  for (int64_t t = span / 2; t >= 1; t /= 2)
    if (k.prefix(i, i + (length + t) * d) > below) length += t;
  const int64_t j = i + length * d;
  const int shared = k.prefix(i, j);
  int64_t split = 0;
  for (int64_t divisor = 2;; divisor *= 2) {
    const int64_t t = (length + divisor - 1) / divisor;
    if (k.prefix(i, i + (split + t) * d) > shared) split += t;
    if (t == 1) break;
  }
  const int64_t gamma = i + split * d + (d < 0 ? -1 : 0);
  const int64_t lo = i < j ? i : j, hi = i < j ? j : i;
  attach_child(links, leaves, i, 0, gamma, lo == gamma, triangles);
  attach_child(links, leaves, i, 1, gamma + 1, hi == gamma + 1, triangles);
}

// ---------------------------------------------------------------- queries

template <typename T>
struct NearestHit {
  int32_t face;        // -1: nothing found (a non-finite query)
  int64_t position;    // in leaf order
  TriangleHit<T> hit;  // in the triangle's frame corners
};

// Whether every vertex of the mesh's faces is finite (the root's areas are not NaN).
template <typename T>
OMNIFAST_HD bool mesh_is_finite(const BvhView<T>& m) {
  return m.dipoles[6] == m.dipoles[6] &&
         m.dipoles[kDipoleStride + 6] == m.dipoles[kDipoleStride + 6];
}

// The power of two a query and its mesh are scaled by so that no squared distance overflows:
// 1 unless a coordinate of the query or the root's boxes is beyond a quarter of the root of the
// largest number; then the largest coordinate becomes 2 to 4 (and 1 / s stays finite).
template <typename T>
OMNIFAST_HD T query_scale(const BvhView<T>& m, const Vec3<T>& p) {
  T largest = max_of(max_of(abs_of(p.x), abs_of(p.y)), abs_of(p.z));
  for (int i = 0; i < 2 * kBoxStride; ++i)
    if (is_finite(m.boxes[i])) largest = max_of(largest, abs_of(m.boxes[i]));
  return largest < T(0.25) * sqrt_of(largest_finite<T>()) ? T(1)
                                                          : T(4) * inverse_power_of_two(largest);
}

// The leaf's triangles against the best hit so far (see nearest_triangle).
template <typename T>
OMNIFAST_HD void nearest_in_leaf(const BvhView<T>& m, const Vec3<T>& p, T s, bool with_area_only,
                                 int32_t ref, NearestHit<T>& best) {
  const int64_t first = leaf_first(ref);
  for (int k = 0; k < leaf_count(ref); ++k) {
    const T* t = m.tris + (first + k) * kTriStride;
    const Vec3<T> ap = p - s * load3(t), n = load3(t + 9);
    if (with_area_only && is_zero(n)) continue;
    const T height = dot(ap, n);
    if (height * height > best.hit.sq) continue;  // the plane is already farther than the best
    const TriangleHit<T> h = closest_on_triangle(t, ap, height, s);
    if (!(h.sq <= best.hit.sq)) continue;
    const int32_t face = m.prim_face[first + k];
    if (h.sq < best.hit.sq || best.face < 0 || face < best.face) best = {face, first + k, h};
  }
}

// Nearest triangle by depth-first traversal, nearer child first, pruning boxes (and planes)
// farther than the best so far; `with_area_only` skips zero-area faces. Lengths are scaled by
// s (query_scale; sq is in scaled units). Equal distances go to the smaller face id among those
// visited; faces tied only up to rounding (at a shared edge or vertex) may resolve either way.
template <typename T>
OMNIFAST_HD NearestHit<T> nearest_triangle(const BvhView<T>& m, const Vec3<T>& query, T s,
                                           bool with_area_only = false) {
  NearestHit<T> best{-1, 0, {infinity_of<T>(), T(0), T(0), T(0), kRegionFace}};
  if (!mesh_is_finite(m) || !(is_finite(query.x) && is_finite(query.y) && is_finite(query.z)))
    return best;
  const Vec3<T> p = s * query;
  int32_t stack_node[kBvhStack];
  T stack_sq[kBvhStack];
  int top = 0;
  int32_t node = 0;
  while (true) {
    const T* box = m.boxes + 2 * node * kBoxStride;
    T near_sq = box_sq_distance(p, box, s), far_sq = box_sq_distance(p, box + kBoxStride, s);
    int32_t near_child = m.links[kLinkStride * node], far_child = m.links[kLinkStride * node + 1];
    if (far_sq < near_sq) {
      const T s = near_sq;
      near_sq = far_sq;
      far_sq = s;
      const int32_t c = near_child;
      near_child = far_child;
      far_child = c;
    }
    bool open_near = near_sq <= best.hit.sq, open_far = far_sq <= best.hit.sq;
    if (open_near && near_child < 0) {
      nearest_in_leaf(m, p, s, with_area_only, near_child, best);
      open_near = false;
    }
    if (open_far && far_child < 0) {
      nearest_in_leaf(m, p, s, with_area_only, far_child, best);
      open_far = false;
    }
    open_near = open_near && near_sq <= best.hit.sq;
    open_far = open_far && far_sq <= best.hit.sq;
    if (open_near) {
      if (open_far) {
        stack_node[top] = far_child;
        stack_sq[top++] = far_sq;
      }
      node = near_child;
      continue;
    }
    if (open_far) {
      node = far_child;
      continue;
    }
    while (top > 0 && !(stack_sq[top - 1] <= best.hit.sq)) --top;
    if (top == 0) break;
    node = stack_node[--top];
  }
  return best;
}

// Solid angle of triangle (a, b, c) seen from p (Van Oosterom and Strackee 1983); positive when p
// is on the side the normal (b - a) x (c - a) points away from.
template <typename T>
OMNIFAST_HD T solid_angle(const Vec3<T>& p, const Vec3<T>& a, const Vec3<T>& b, const Vec3<T>& c) {
  const Vec3<T> x = a - p, y = b - p, z = c - p;
  const T lx = length(x), ly = length(y), lz = length(z);
  const T num = dot(x, cross(y, z));
  const T den = lx * ly * lz + dot(x, y) * lz + dot(x, z) * ly + dot(y, z) * lx;
  return T(2) * atan2_of(num, den);
}

// Generalised winding number (Jacobson et al. 2013) by the fast far-field expansion (Barill et
// al. 2018, order 1, accuracy beta = 2): a slot farther than beta times its radius contributes its
// dipole, nearer ones open up down to exact per-triangle solid angles. 1 inside a closed
// outward-oriented surface, 0 outside, smooth across holes.
template <typename T>
OMNIFAST_HD T winding_number(const BvhView<T>& m, const Vec3<T>& p) {
  constexpr T kBeta = T(2);
  T sum = T(0);
  int32_t stack[kBvhStack];
  int top = 0;
  int32_t node = 0;
  while (true) {
    for (int side = 0; side < 2; ++side) {
      const int32_t child = m.links[kLinkStride * node + side];
      if (child < 0 && leaf_count(child) == 0) continue;
      const T* dipole = m.dipoles + (2 * node + side) * kDipoleStride;
      const Vec3<T> to_centroid = load3(dipole + 3) - p;
      const T dd = dot(to_centroid, to_centroid);
      if (dd > kBeta * kBeta * dipole[7] * dipole[7]) {
        sum += dot(load3(dipole), to_centroid) / (dd * sqrt_of(dd));
      } else if (child < 0) {
        const int64_t first = leaf_first(child);
        for (int k = 0; k < leaf_count(child); ++k) {
          const T* t = m.tris + (first + k) * kTriStride;
          sum += solid_angle(p, corner_of(t, 0), corner_of(t, 1), corner_of(t, 2));
        }
      } else {
        stack[top++] = child;
      }
    }
    if (top == 0) break;
    node = stack[--top];
  }
  return sum / T(4 * 3.14159265358979323846);
}

// ---------------------------------------------------------------- normals and signs

enum SignMode : int { kSignNone = 0, kSignPseudonormal = 1, kSignWinding = 2 };

// Topology shared by the batch: faces [F][3], each face's edges [F][3] (edge k joins corners k
// and k + 1), and two CSR lists: vertex -> corners (3 f + k) and edge -> faces.
struct MeshTopology {
  const int32_t* faces;
  const int32_t* face_edges;
  const int32_t* corner_offsets;
  const int32_t* corners;
  const int32_t* edge_face_offsets;
  const int32_t* edge_faces;
};

template <typename T>
OMNIFAST_HD void write_face_normal(const T* verts, const MeshTopology& topo, int64_t f, T* out) {
  const int32_t* c = topo.faces + 3 * f;
  const Vec3<T> corner[3] = {load3(verts + 3 * c[0]), load3(verts + 3 * c[1]),
                             load3(verts + 3 * c[2])};
  store3(out, face_unit_normal(corner));
}

// Angle-weighted pseudonormal of a vertex (Baerentzen and Aanaes 2005): incident unit face
// normals weighted by their corner angles. Needs the face normals of the same mesh.
template <typename T>
OMNIFAST_HD void write_vertex_normal(const T* verts, const T* face_normals,
                                     const MeshTopology& topo, int64_t v, T* out) {
  Vec3<T> sum{T(0), T(0), T(0)};
  for (int32_t i = topo.corner_offsets[v]; i < topo.corner_offsets[v + 1]; ++i) {
    const int32_t f = topo.corners[i] / 3, k = topo.corners[i] % 3;
    const int32_t* c = topo.faces + 3 * f;
    const Vec3<T> at = load3(verts + 3 * c[k]);
    const Vec3<T> e1 = load3(verts + 3 * c[(k + 1) % 3]) - at;
    const Vec3<T> e2 = load3(verts + 3 * c[(k + 2) % 3]) - at;
    sum = sum + atan2_of(length(cross(e1, e2)), dot(e1, e2)) * load3(face_normals + 3 * f);
  }
  store3(out, sum);
}

template <typename T>
OMNIFAST_HD void write_edge_normal(const T* face_normals, const MeshTopology& topo, int64_t e,
                                   T* out) {
  Vec3<T> sum{T(0), T(0), T(0)};
  for (int32_t i = topo.edge_face_offsets[e]; i < topo.edge_face_offsets[e + 1]; ++i)
    sum = sum + load3(face_normals + 3 * topo.edge_faces[i]);
  store3(out, sum);
}

// One mesh's normals: unit face normals [F][3], vertex and edge pseudonormals [V][3], [E][3].
template <typename T>
struct MeshNormals {
  const T* face;
  const T* vertex;
  const T* edge;
};

// The pseudonormal of the feature holding the closest point.
template <typename T>
OMNIFAST_HD Vec3<T> feature_normal(const MeshNormals<T>& n, const MeshTopology& topo, int32_t face,
                                   int region) {
  if (region == kRegionFace) return load3(n.face + 3 * face);
  if (region <= kRegionVertexC) return load3(n.vertex + 3 * topo.faces[3 * face + region - 1]);
  return load3(n.edge + 3 * topo.face_edges[3 * face + region - kRegionEdgeAB]);
}

// Everything one query returns: signed (negative inside) or unsigned distance, face id, the
// barycentric weights of the face's three corners and the closest point. A query that finds no
// triangle (non-finite coordinates, or a mesh with a non-finite vertex) gets NaN everywhere and
// face -1. The pseudonormal sign comes from the nearest face with an area: a zero-area face has
// no side, and the edges and vertices only it touches have no pseudonormal.
template <typename T>
OMNIFAST_HD void closest_point_query(const BvhView<T>& m, const MeshNormals<T>& normals,
                                     const MeshTopology& topo, int sign_mode, const T* query,
                                     T* distance, int64_t* face, T* bary, T* point) {
  const Vec3<T> p = load3(query);
  const T s = query_scale(m, p);
  const NearestHit<T> hit = nearest_triangle(m, p, s);
  *face = hit.face;
  if (hit.face < 0) {
    const T nan = nan_of<T>();
    *distance = nan;
    store3(bary, Vec3<T>{nan, nan, nan});
    store3(point, Vec3<T>{nan, nan, nan});
    return;
  }
  const T* t = m.tris + hit.position * kTriStride;
  const Vec3<T> ps = s * p;
  const TriangleHit<T> on_face = to_face_corners(hit.hit, rotation_of(t));
  store3(bary, Vec3<T>{on_face.u, on_face.v, on_face.w});
  store3(point, (T(1) / s) * hit_point(t, ps, hit.hit, s));
  bool inside = false;
  // A query so far away that the search ran scaled is outside the mesh's box, so outside it:
  // the nearest feature's pseudonormal cannot tell (every vertex is as near, to rounding).
  const bool far_outside = s < T(1) && box_sq_distance(ps, m.boxes, s) > T(0) &&
                           box_sq_distance(ps, m.boxes + kBoxStride, s) > T(0);
  if (sign_mode == kSignPseudonormal && !far_outside) {
    const bool has_area = !is_zero(load3(t + 9));
    const NearestHit<T> side = has_area ? hit : nearest_triangle(m, p, s, true);
    if (side.face >= 0) {
      const T* st = m.tris + side.position * kTriStride;
      const int region = to_face_corners(side.hit, rotation_of(st)).region;
      inside = dot(ps - hit_point(st, ps, side.hit, s),
                   feature_normal(normals, topo, side.face, region)) < T(0);
    }
  } else if (sign_mode == kSignWinding) {
    inside = winding_number(m, p) > T(0.5);
  }
  const T d = sqrt_of(hit.hit.sq) / s;
  *distance = inside ? -d : d;
}

}  // namespace omnifast
