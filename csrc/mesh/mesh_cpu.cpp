// CPU loops over the shared mesh math (mesh.h), and the host's own tree builder: a binned
// surface-area-heuristic (SAH) build, one mesh per worker.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

#include "mesh_launch.h"

namespace omnifast {
namespace {

constexpr int64_t kPointGrain = 64;
constexpr int64_t kElementGrain = 1024;

// Items [0, count) of the flattened batch, item(i) each, in parallel.
template <typename Item>
void for_items(int64_t count, int64_t grain, const Item& item) {
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) item(i);
  });
}

template <typename T>
void normals(const MeshDims& d, const T* verts, const MeshTopology& topo, const NormalArrays& out) {
  T* face = static_cast<T*>(out.face);
  for_items(d.batch * d.faces, kElementGrain,
            [&](int64_t i) { face_normal_item(d, verts, topo, face, i); });
  for_items(d.batch * d.verts, kElementGrain, [&](int64_t i) {
    vertex_normal_item(d, verts, topo, static_cast<const T*>(face), static_cast<T*>(out.vertex), i);
  });
  for_items(d.batch * d.edges, kElementGrain, [&](int64_t i) {
    edge_normal_item(d, topo, static_cast<const T*>(face), static_cast<T*>(out.edge), i);
  });
}

// ---- binned SAH builder

struct Box {
  std::array<double, 3> lo{1e300, 1e300, 1e300}, hi{-1e300, -1e300, -1e300};
  void grow(const Box& o) {
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], o.lo[a]);
      hi[a] = std::max(hi[a], o.hi[a]);
    }
  }
  void grow(const std::array<double, 3>& p) {
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], p[a]);
      hi[a] = std::max(hi[a], p[a]);
    }
  }
  double half_area() const {
    if (lo[0] > hi[0]) return 0;
    const double x = hi[0] - lo[0], y = hi[1] - lo[1], z = hi[2] - lo[2];
    return x * y + y * z + z * x;
  }
};

constexpr int kBins = 16;
constexpr int kSahLeafSize = 2;   // always a leaf at or below this many triangles
constexpr int kSahMaxLeaf = 4;    // a leaf above this many never
constexpr int kSahMaxDepth = 32;  // deeper ranges split at the median (keeps the stack bounded)

class SahBuilder {
 public:
  SahBuilder(const std::vector<Box>& boxes, int32_t* links, int32_t* leaves, int32_t* order)
      : boxes_(boxes), links_(links), leaves_(leaves), order_(order) {
    centroids_.resize(boxes.size());
    for (size_t i = 0; i < boxes.size(); ++i)
      for (int a = 0; a < 3; ++a) centroids_[i][a] = 0.5 * (boxes[i].lo[a] + boxes[i].hi[a]);
  }

  // Writes the tree; returns {internal nodes, leaves}.
  std::array<int32_t, 2> build() {
    const int64_t n = static_cast<int64_t>(boxes_.size());
    for (int64_t i = 0; i < n; ++i) order_[i] = static_cast<int32_t>(i);
    nodes_ = 1;
    links_[2] = -1;
    if (n <= kSahLeafSize) {
      make_leaf(0, n, 0);
      links_[1] = leaf_ref(0, 0);
      return {nodes_, leaf_count_};
    }
    std::vector<Task> tasks;
    split(Task{0, n, -1, 0}, 0, tasks);
    while (!tasks.empty()) {
      const Task t = tasks.back();
      tasks.pop_back();
      const int64_t count = t.end - t.begin;
      if (count <= kSahLeafSize) {
        make_leaf(t.begin, count, t.slot);
        continue;
      }
      const Split s = best_split(t);
      if (count <= kSahMaxLeaf && s.leaf_is_cheaper) {
        make_leaf(t.begin, count, t.slot);
        continue;
      }
      const int32_t node = nodes_++;
      links_[kLinkStride * (t.slot >> 1) + (t.slot & 1)] = node;
      links_[kLinkStride * node + 2] = t.slot;
      split(t, node, tasks, &s);
    }
    return {nodes_, leaf_count_};
  }

 private:
  struct Task {
    int64_t begin, end;
    int32_t slot;  // the parent's slot that receives this range
    int depth;
  };
  struct Split {
    int axis = -1;
    int bin = 0;  // left side: bins [0, bin)
    double lo = 0, scale = 0;
    bool leaf_is_cheaper = false;
  };

  void make_leaf(int64_t begin, int64_t count, int32_t slot) {
    const int32_t ref = leaf_ref(begin, static_cast<int>(count));
    links_[kLinkStride * (slot >> 1) + (slot & 1)] = ref;
    leaves_[2 * leaf_count_] = ~ref;
    leaves_[2 * leaf_count_ + 1] = slot;
    ++leaf_count_;
  }

  int bin_of(const Split& s, int32_t prim) const {
    const int b = static_cast<int>((centroids_[prim][s.axis] - s.lo) * s.scale);
    return std::min(std::max(b, 0), kBins - 1);
  }

  Split best_split(const Task& t) const {
    Box centroid_box, node_box;
    for (int64_t i = t.begin; i < t.end; ++i) {
      centroid_box.grow(centroids_[order_[i]]);
      node_box.grow(boxes_[order_[i]]);
    }
    Split best;
    double best_cost = 1e300;
    for (int axis = 0; axis < 3; ++axis) {
      const double extent = centroid_box.hi[axis] - centroid_box.lo[axis];
      if (!(extent > 0)) continue;
      Split s;
      s.axis = axis;
      s.lo = centroid_box.lo[axis];
      s.scale = kBins / extent;
      std::array<Box, kBins> bin_box;
      std::array<int64_t, kBins> bin_count{};
      for (int64_t i = t.begin; i < t.end; ++i) {
        const int b = bin_of(s, order_[i]);
        bin_box[b].grow(boxes_[order_[i]]);
        ++bin_count[b];
      }
      std::array<double, kBins> right_cost{};
      Box right;
      int64_t right_count = 0;
      for (int b = kBins - 1; b > 0; --b) {
        right.grow(bin_box[b]);
        right_count += bin_count[b];
        right_cost[b] = right.half_area() * right_count;
      }
      Box left;
      int64_t left_count = 0;
      for (int b = 1; b < kBins; ++b) {
        left.grow(bin_box[b - 1]);
        left_count += bin_count[b - 1];
        const double cost = left.half_area() * left_count + right_cost[b];
        if (left_count > 0 && left_count < t.end - t.begin && cost < best_cost) {
          best_cost = cost;
          best = s;
          best.bin = b;
        }
      }
    }
    // Unit costs for a box test and a triangle test: a leaf costs count x area, a split one box
    // test plus its children's expected triangle tests.
    const double area = node_box.half_area();
    best.leaf_is_cheaper = best.axis < 0 || area * (t.end - t.begin) <= area + best_cost;
    return best;
  }

  // Splits task t into two child tasks of internal node `node` (already linked to its parent).
  void split(const Task& t, int32_t node, std::vector<Task>& tasks, const Split* given = nullptr) {
    Split s = given != nullptr ? *given : best_split(t);
    int64_t mid;
    if (s.axis >= 0 && t.depth < kSahMaxDepth) {
      mid = std::partition(order_ + t.begin, order_ + t.end,
                           [&](int32_t p) { return bin_of(s, p) < s.bin; }) -
            order_;
    } else {  // no usable split, or too deep: the median of the longest centroid axis
      Box centroid_box;
      for (int64_t i = t.begin; i < t.end; ++i) centroid_box.grow(centroids_[order_[i]]);
      int axis = 0;
      for (int a = 1; a < 3; ++a)
        if (centroid_box.hi[a] - centroid_box.lo[a] > centroid_box.hi[axis] - centroid_box.lo[axis])
          axis = a;
      mid = (t.begin + t.end) / 2;
      std::nth_element(order_ + t.begin, order_ + mid, order_ + t.end, [&](int32_t a, int32_t b) {
        return centroids_[a][axis] < centroids_[b][axis];
      });
    }
    tasks.push_back(Task{mid, t.end, 2 * node + 1, t.depth + 1});
    tasks.push_back(Task{t.begin, mid, 2 * node, t.depth + 1});
  }

  const std::vector<Box>& boxes_;
  std::vector<std::array<double, 3>> centroids_;
  int32_t* links_;
  int32_t* leaves_;
  int32_t* order_;
  int32_t nodes_ = 0, leaf_count_ = 0;
};

template <typename T>
void build_sah(const MeshDims& d, const T* verts, const MeshTopology& topo, const BvhArrays& bvh) {
  const int64_t nodes = d.nodes();
  at::parallel_for(0, d.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<Box> boxes(d.faces);
    for (int64_t b = begin; b < end; ++b) {
      const T* v = verts + b * d.verts * 3;
      for (int64_t f = 0; f < d.faces; ++f) {
        Box box;
        for (int c = 0; c < 3; ++c) {
          const T* p = v + 3 * topo.faces[3 * f + c];
          box.grow(std::array<double, 3>{double(finite_or_zero(p[0])), double(finite_or_zero(p[1])),
                                         double(finite_or_zero(p[2]))});
        }
        boxes[f] = box;
      }
      SahBuilder builder(boxes, bvh.links + b * nodes * kLinkStride, bvh.leaves + b * d.faces * 2,
                         bvh.prim_face + b * d.faces);
      const std::array<int32_t, 2> counts = builder.build();
      bvh.counts[2 * b] = counts[0];
      bvh.counts[2 * b + 1] = counts[1];
    }
  });
}

// ---- linear builder, refit and queries

template <typename T>
void morton_keys(const MeshDims& d, const T* verts, const MeshTopology& topo, int64_t* keys) {
  at::parallel_for(0, d.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T bounds[6] = {infinity_of<T>(),  infinity_of<T>(),  infinity_of<T>(),
                     -infinity_of<T>(), -infinity_of<T>(), -infinity_of<T>()};
      for (int64_t f = 0; f < d.faces; ++f) {
        const Vec3<T> c = triangle_centroid(d, verts, topo, b, f);
        const T xyz[3] = {c.x, c.y, c.z};
        for (int a = 0; a < 3; ++a) {
          bounds[a] = std::min(bounds[a], xyz[a]);
          bounds[3 + a] = std::max(bounds[3 + a], xyz[a]);
        }
      }
      for (int64_t f = 0; f < d.faces; ++f)
        keys[b * d.faces + f] = triangle_key(d, verts, topo, bounds, b, f);
    }
  });
}

// One mesh per worker: its triangles in leaf order, then the bounds pass leaf by leaf.
template <typename T>
void refit(const MeshDims& d, const T* verts, const MeshTopology& topo, const BvhArrays& bvh,
           int32_t* counters) {
  for_items(d.batch, 1, [&](int64_t b) {
    for (int64_t k = 0; k < d.faces; ++k) gather_triangle(d, verts, topo, bvh, b, k);
    for (int64_t leaf = 0; leaf < bvh.counts[2 * b + 1]; ++leaf)
      bounds_item<T>(d, bvh, counters, b, leaf, [](int32_t* counter) { return (*counter)++; });
  });
}

// Queries [begin, end) of one worker.
template <typename T>
OMNIFAST_VECTOR_CLONES void closest_point_range(const MeshDims& d, const MeshTopology& topo,
                                                const BvhArrays& bvh, const NormalArrays& normals,
                                                int sign_mode, const QueryArrays& q, int64_t begin,
                                                int64_t end) {
  for (int64_t i = begin; i < end; ++i)
    closest_point_item<T>(d, topo, bvh, normals, sign_mode, q, i);
}

template <typename T>
void closest_points(const MeshDims& d, const MeshTopology& topo, const BvhArrays& bvh,
                    const NormalArrays& normals, int sign_mode, const QueryArrays& q) {
  at::parallel_for(0, d.batch * q.per_mesh, kPointGrain, [&](int64_t begin, int64_t end) {
    closest_point_range<T>(d, topo, bvh, normals, sign_mode, q, begin, end);
  });
}

}  // namespace

void mesh_normals_cpu(const MeshDims& d, bool is_double, const void* verts,
                      const MeshTopology& topo, const NormalArrays& out) {
  if (is_double)
    normals(d, static_cast<const double*>(verts), topo, out);
  else
    normals(d, static_cast<const float*>(verts), topo, out);
}

void mesh_build_sah_cpu(const MeshDims& d, bool is_double, const void* verts,
                        const MeshTopology& topo, const BvhArrays& bvh) {
  if (is_double)
    build_sah(d, static_cast<const double*>(verts), topo, bvh);
  else
    build_sah(d, static_cast<const float*>(verts), topo, bvh);
}

void mesh_morton_keys_cpu(const MeshDims& d, bool is_double, const void* verts,
                          const MeshTopology& topo, int64_t* keys) {
  if (is_double)
    morton_keys(d, static_cast<const double*>(verts), topo, keys);
  else
    morton_keys(d, static_cast<const float*>(verts), topo, keys);
}

void mesh_lbvh_links_cpu(const MeshDims& d, const int64_t* sorted_keys, const BvhArrays& bvh) {
  const int64_t internal = lbvh_internal(lbvh_leaves(d.faces));
  for_items(d.batch, 1, [&](int64_t b) {
    for (int64_t node = 0; node < internal; ++node) lbvh_node_item(d, sorted_keys, bvh, b, node);
  });
}

void mesh_refit_cpu(const MeshDims& d, bool is_double, const void* verts, const MeshTopology& topo,
                    const BvhArrays& bvh, int32_t* counters) {
  if (is_double)
    refit(d, static_cast<const double*>(verts), topo, bvh, counters);
  else
    refit(d, static_cast<const float*>(verts), topo, bvh, counters);
}

void mesh_closest_point_cpu(const MeshDims& d, bool is_double, const MeshTopology& topo,
                            const BvhArrays& bvh, const NormalArrays& normals, int sign_mode,
                            const QueryArrays& q) {
  if (is_double)
    closest_points<double>(d, topo, bvh, normals, sign_mode, q);
  else
    closest_points<float>(d, topo, bvh, normals, sign_mode, q);
}

}  // namespace omnifast
