// The boundary between the torch glue (mesh_ops.cpp) and the backends. Plain C++.
#pragma once

#include <cstdint>

#include "mesh.h"

namespace omnifast {

// How a tree is built: 0 binned SAH (CPU), 1 linear from Morton codes (both devices).
enum MeshBuilder : int { kBuilderSah = 0, kBuilderLinear = 1 };

// A built tree is a list of tensors in this order, each with the layout below: the C++ glue
// allocates from this table and Python reads it (omnifast._C.TREE_LAYOUT) for its shape
// functions, so neither mirrors the other. A refit renews the coordinate fields
// (kRefitFields) and keeps the rest.
enum TreeField : int {
  kBoxes,
  kDipoles,
  kLinks,
  kLeaves,
  kCounts,
  kTris,
  kPrimFace,
  kFaceNormals,
  kVertexNormals,
  kEdgeNormals,
  kTreeFields
};
// Sizes named by negative entries (positive ones are themselves): B meshes, internal node
// capacity max(F - 1, 1), F faces, V vertices, E edges.
enum TreeSize : int {
  kSizeBatch = -1,
  kSizeNodes = -2,
  kSizeFaces = -3,
  kSizeVerts = -4,
  kSizeEdges = -5
};
struct TreeFieldLayout {
  const char* name;
  int rank;
  int sizes[4];
  bool is_int;  // int32, else the dtype of the vertices
  bool zeroed;  // allocated zeroed (a tree may use fewer nodes than the capacity)
};
constexpr TreeFieldLayout kTreeLayout[kTreeFields] = {
    {"boxes", 4, {kSizeBatch, kSizeNodes, 2, kBoxStride}, false, true},
    {"dipoles", 4, {kSizeBatch, kSizeNodes, 2, kDipoleStride}, false, true},
    {"links", 3, {kSizeBatch, kSizeNodes, kLinkStride, 0}, true, true},
    {"leaves", 3, {kSizeBatch, kSizeFaces, 2, 0}, true, true},
    {"counts", 2, {kSizeBatch, 2, 0, 0}, true, false},
    {"tris", 3, {kSizeBatch, kSizeFaces, kTriStride, 0}, false, false},
    {"prim_face", 2, {kSizeBatch, kSizeFaces, 0, 0}, true, false},
    {"face_normals", 3, {kSizeBatch, kSizeFaces, 3, 0}, false, false},
    {"vertex_normals", 3, {kSizeBatch, kSizeVerts, 3, 0}, false, false},
    {"edge_normals", 3, {kSizeBatch, kSizeEdges, 3, 0}, false, false},
};
constexpr int kRefitFields[] = {kBoxes,       kDipoles,       kTris,
                                kFaceNormals, kVertexNormals, kEdgeNormals};

// The shared topology is a list of int32 tensors in this order (see MeshTopology).
constexpr int kTopologyFields = 6;
constexpr const char* kTopologyFieldNames[kTopologyFields] = {
    "faces", "face_edges", "corner_offsets", "corners", "edge_face_offsets", "edge_faces"};

// One call's sizes: B meshes of V vertices sharing F faces with E distinct edges; per mesh the
// tree arrays hold up to `nodes` internal nodes (max(F - 1, 1)) and F leaves.
struct MeshDims {
  int64_t batch, verts, faces, edges;
  OMNIFAST_HD int64_t nodes() const { return faces > 1 ? faces - 1 : 1; }
  // One entry of a TreeFieldLayout's sizes.
  int64_t size(int entry) const {
    switch (entry) {
      case kSizeBatch:
        return batch;
      case kSizeNodes:
        return nodes();
      case kSizeFaces:
        return faces;
      case kSizeVerts:
        return verts;
      case kSizeEdges:
        return edges;
      default:
        return entry;
    }
  }
};

// Per-batch arrays, all contiguous with the mesh index outermost. Coordinates (boxes, dipoles,
// tris) are in the dtype of the vertices.
struct BvhArrays {
  void* boxes;         // [B][nodes][2][6]
  void* dipoles;       // [B][nodes][2][8]
  int32_t* links;      // [B][nodes][3]
  int32_t* leaves;     // [B][F][2]: leaf code, parent slot
  int32_t* counts;     // [B][2]: internal nodes, leaves
  void* tris;          // [B][F][kTriStride] in leaf order
  int32_t* prim_face;  // [B][F]
};

struct NormalArrays {
  void* face;    // [B][F][3] unit
  void* vertex;  // [B][V][3] angle-weighted
  void* edge;    // [B][E][3]
};

struct QueryArrays {
  const void* points;  // [B][N][3]
  int64_t per_mesh;    // N
  void* distance;      // [B][N]
  int64_t* face;       // [B][N]
  void* bary;          // [B][N][3]
  void* point;         // [B][N][3]
};

// Builders write the tree's shape (links, leaves, counts, prim_face); `refit` then gathers the
// triangles in leaf order and runs the bounds pass (counters: zeroed [B][nodes] int32).
void mesh_normals_cpu(const MeshDims& d, bool is_double, const void* verts,
                      const MeshTopology& topo, const NormalArrays& out);
void mesh_build_sah_cpu(const MeshDims& d, bool is_double, const void* verts,
                        const MeshTopology& topo, const BvhArrays& bvh);
void mesh_morton_keys_cpu(const MeshDims& d, bool is_double, const void* verts,
                          const MeshTopology& topo, int64_t* keys);
void mesh_lbvh_links_cpu(const MeshDims& d, const int64_t* sorted_keys, const BvhArrays& bvh);
void mesh_refit_cpu(const MeshDims& d, bool is_double, const void* verts, const MeshTopology& topo,
                    const BvhArrays& bvh, int32_t* counters);
void mesh_closest_point_cpu(const MeshDims& d, bool is_double, const MeshTopology& topo,
                            const BvhArrays& bvh, const NormalArrays& normals, int sign_mode,
                            const QueryArrays& q);

// The same on a cudaStream_t (the linear builder only); nullptr or the CUDA error string.
const char* mesh_normals_cuda(const MeshDims& d, bool is_double, const void* verts,
                              const MeshTopology& topo, const NormalArrays& out, void* stream);
const char* mesh_morton_keys_cuda(const MeshDims& d, bool is_double, const void* verts,
                                  const MeshTopology& topo, int64_t* keys, void* stream);
const char* mesh_lbvh_links_cuda(const MeshDims& d, const int64_t* sorted_keys,
                                 const BvhArrays& bvh, void* stream);
const char* mesh_refit_cuda(const MeshDims& d, bool is_double, const void* verts,
                            const MeshTopology& topo, const BvhArrays& bvh, int32_t* counters,
                            void* stream);
const char* mesh_closest_point_cuda(const MeshDims& d, bool is_double, const MeshTopology& topo,
                                    const BvhArrays& bvh, const NormalArrays& normals,
                                    int sign_mode, const QueryArrays& q, void* stream);

// Typed views of mesh b, for both backends.
template <typename T>
OMNIFAST_HD BvhView<T> bvh_view(const MeshDims& d, const BvhArrays& a, int64_t b) {
  const int64_t n = d.nodes();
  return {static_cast<const T*>(a.boxes) + b * n * 2 * kBoxStride,
          static_cast<const T*>(a.dipoles) + b * n * 2 * kDipoleStride,
          a.links + b * n * kLinkStride, static_cast<const T*>(a.tris) + b * d.faces * kTriStride,
          a.prim_face + b * d.faces};
}

template <typename T>
OMNIFAST_HD MeshNormals<T> normals_view(const MeshDims& d, const NormalArrays& a, int64_t b) {
  return {static_cast<const T*>(a.face) + b * d.faces * 3,
          static_cast<const T*>(a.vertex) + b * d.verts * 3,
          static_cast<const T*>(a.edge) + b * d.edges * 3};
}

// ---- one work item of the flattened batch, for the CPU loops and the CUDA kernels alike

// Normals of item i of the batch's faces, vertices or edges (mesh b = i / per-mesh count); vertex
// and edge normals read the face normals of the same mesh.
template <typename T>
OMNIFAST_HD void face_normal_item(const MeshDims& d, const T* verts, const MeshTopology& topo,
                                  T* face, int64_t i) {
  const int64_t b = i / d.faces;
  write_face_normal(verts + b * d.verts * 3, topo, i - b * d.faces, face + 3 * i);
}

template <typename T>
OMNIFAST_HD void vertex_normal_item(const MeshDims& d, const T* verts, const MeshTopology& topo,
                                    const T* face, T* vertex, int64_t i) {
  const int64_t b = i / d.verts;
  write_vertex_normal(verts + b * d.verts * 3, face + b * d.faces * 3, topo, i - b * d.verts,
                      vertex + 3 * i);
}

template <typename T>
OMNIFAST_HD void edge_normal_item(const MeshDims& d, const MeshTopology& topo, const T* face,
                                  T* edge, int64_t i) {
  const int64_t b = i / d.edges;
  write_edge_normal(face + b * d.faces * 3, topo, i - b * d.edges, edge + 3 * i);
}

// The linear builder's leaves (kLbvhLeafSize triangles each) and internal nodes per mesh: a
// single leaf still hangs under a root node.
OMNIFAST_HD int64_t lbvh_leaves(int64_t faces) {
  return (faces + kLbvhLeafSize - 1) / kLbvhLeafSize;
}
OMNIFAST_HD int64_t lbvh_internal(int64_t leaves) { return leaves > 1 ? leaves - 1 : 1; }

// Internal node `node` of mesh b's linear tree from the batch's sorted keys; node 0 also records
// the mesh's node and leaf counts.
OMNIFAST_HD void lbvh_node_item(const MeshDims& d, const int64_t* sorted_keys, const BvhArrays& a,
                                int64_t b, int64_t node) {
  const int64_t leaves = lbvh_leaves(d.faces);
  lbvh_node(LeafKeys{sorted_keys + b * d.faces, leaves}, node, d.faces,
            a.links + b * d.nodes() * kLinkStride, a.leaves + b * d.faces * 2);
  if (node == 0) {
    a.counts[2 * b] = static_cast<int32_t>(lbvh_internal(leaves));
    a.counts[2 * b + 1] = static_cast<int32_t>(leaves);
  }
}

// The bounds pass from leaf `leaf` of mesh b. `counters` ([B][nodes], zeroed) count the arrivals
// at each node through `arrive(counter)`, which adds one and returns the count before.
template <typename T, typename Arrive>
OMNIFAST_HD void bounds_item(const MeshDims& d, const BvhArrays& a, int32_t* counters, int64_t b,
                             int64_t leaf, Arrive arrive) {
  const int64_t n = d.nodes();
  int32_t* arrivals = counters + b * n;
  bounds_from_leaf(static_cast<T*>(a.boxes) + b * n * 2 * kBoxStride,
                   static_cast<T*>(a.dipoles) + b * n * 2 * kDipoleStride,
                   a.links + b * n * kLinkStride, a.leaves + b * d.faces * 2,
                   static_cast<const T*>(a.tris) + b * d.faces * kTriStride, leaf,
                   [&](int32_t node) { return arrive(arrivals + node) == 1; });
}

// Query i of the batch (mesh b = i / N).
template <typename T>
OMNIFAST_HD void closest_point_item(const MeshDims& d, const MeshTopology& topo,
                                    const BvhArrays& bvh, const NormalArrays& normals,
                                    int sign_mode, const QueryArrays& q, int64_t i) {
  const int64_t b = i / q.per_mesh;
  closest_point_query(bvh_view<T>(d, bvh, b), normals_view<T>(d, normals, b), topo, sign_mode,
                      static_cast<const T*>(q.points) + 3 * i, static_cast<T*>(q.distance) + i,
                      q.face + i, static_cast<T*>(q.bary) + 3 * i,
                      static_cast<T*>(q.point) + 3 * i);
}

// Triangle k of mesh b (leaf order) from its vertices.
template <typename T>
OMNIFAST_HD void gather_triangle(const MeshDims& d, const T* verts, const MeshTopology& topo,
                                 const BvhArrays& a, int64_t b, int64_t k) {
  const int32_t* corner = topo.faces + 3 * a.prim_face[b * d.faces + k];
  const T* v = verts + b * d.verts * 3;
  write_triangle(load3(v + 3 * corner[0]), load3(v + 3 * corner[1]), load3(v + 3 * corner[2]),
                 static_cast<T*>(a.tris) + (b * d.faces + k) * kTriStride);
}

// Centroid of triangle f of mesh b, with non-finite components 0 (see finite_or_zero).
template <typename T>
OMNIFAST_HD Vec3<T> triangle_centroid(const MeshDims& d, const T* verts, const MeshTopology& topo,
                                      int64_t b, int64_t f) {
  const int32_t* corner = topo.faces + 3 * f;
  const T* v = verts + b * d.verts * 3;
  const Vec3<T> c = (T(1) / T(3)) * (load3(v + 3 * corner[0]) + load3(v + 3 * corner[1]) +
                                     load3(v + 3 * corner[2]));
  return {finite_or_zero(c.x), finite_or_zero(c.y), finite_or_zero(c.z)};
}

// Sort key of triangle f of mesh b: the mesh in the high half, the Morton code of the triangle's
// centroid within the box of all centroids (`bounds`: lo, hi) in the low half.
template <typename T>
OMNIFAST_HD int64_t triangle_key(const MeshDims& d, const T* verts, const MeshTopology& topo,
                                 const T* bounds, int64_t b, int64_t f) {
  const Vec3<T> lo = load3(bounds);
  return (b << 32) |
         morton_code(triangle_centroid(d, verts, topo, b, f), lo, load3(bounds + 3) - lo);
}

}  // namespace omnifast
