// Torch glue of the closest-point queries: checks, allocation, the tree builders and the
// hand-off to the CPU loops or the CUDA launchers. The shared topology arrives as six int32
// tensors (faces, face edges, vertex -> corner CSR, edge -> face CSR, see MeshTopology), a built
// tree as the list mesh_build returns.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "../common/dispatch.h"
#include "mesh_launch.h"

namespace omnifast {
namespace {

struct Mesh {
  MeshDims dims;
  MeshTopology topo;
  bool is_double;
};

void check_int32_on(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& like) {
  check_defined(op, arg, t);
  check_same_device(op, arg, t, "verts", like);
  OMNIFAST_CHECK_ARG(t.scalar_type() == at::kInt && t.is_contiguous(), op, arg,
                     "a contiguous int32 tensor (from omnifast.MeshIndex)", t.scalar_type());
}

// verts [B, V, 3] float32/float64 on CPU or CUDA, with the topology of MeshIndex for V vertices.
Mesh mesh_of(const char* op, const at::Tensor& verts, at::TensorList topology) {
  check_defined(op, "verts", verts);
  OMNIFAST_CHECK_ARG(verts.dim() == 3 && verts.size(2) == 3, op, "verts", "[B, V, 3]",
                     shape_of(verts));
  OMNIFAST_CHECK_ARG(verts.scalar_type() == at::kFloat || verts.scalar_type() == at::kDouble, op,
                     "verts", "float32 or float64", verts.scalar_type());
  OMNIFAST_CHECK_ARG(verts.is_cpu() || verts.is_cuda(), op, "verts", "on a CPU or CUDA device",
                     verts.device().str());
  OMNIFAST_CHECK_ARG(verts.is_contiguous(), op, "verts", "contiguous", "a strided tensor");
  OMNIFAST_CHECK_ARG(topology.size() == kTopologyFields, op, "topology",
                     std::to_string(kTopologyFields) + " tensors", topology.size());
  for (int i = 0; i < kTopologyFields; ++i)
    check_int32_on(op, kTopologyFieldNames[i], topology[i], verts);
  const at::Tensor& faces = topology[0];
  OMNIFAST_CHECK_ARG(faces.dim() == 2 && faces.size(1) == 3 && faces.size(0) > 0, op, "faces",
                     "[F, 3] with F >= 1", shape_of(faces));
  OMNIFAST_CHECK_ARG(faces.size(0) < (int64_t(1) << 27), op, "faces", "fewer than 2^27 faces",
                     faces.size(0));
  OMNIFAST_CHECK_ARG(topology[2].numel() == verts.size(1) + 1, op, "verts",
                     "[B, V, 3] with the V the topology was made for (" +
                         std::to_string(topology[2].numel() - 1) + ")",
                     shape_of(verts));
  check_shape(op, "face_edges", topology[1], faces.sizes());
  Mesh m;
  m.dims = MeshDims{verts.size(0), verts.size(1), faces.size(0), topology[4].numel() - 1};
  m.topo = MeshTopology{topology[0].data_ptr<int32_t>(), topology[1].data_ptr<int32_t>(),
                        topology[2].data_ptr<int32_t>(), topology[3].data_ptr<int32_t>(),
                        topology[4].data_ptr<int32_t>(), topology[5].data_ptr<int32_t>()};
  m.is_double = verts.scalar_type() == at::kDouble;
  return m;
}

NormalArrays normal_arrays(const at::Tensor& face, const at::Tensor& vertex,
                           const at::Tensor& edge) {
  return {face.data_ptr(), vertex.data_ptr(), edge.data_ptr()};
}

// Tree field f for these sizes, as kTreeLayout describes it.
std::vector<int64_t> field_sizes(int f, const MeshDims& d) {
  std::vector<int64_t> sizes;
  for (int i = 0; i < kTreeLayout[f].rank; ++i) sizes.push_back(d.size(kTreeLayout[f].sizes[i]));
  return sizes;
}

at::Tensor new_field(int f, const MeshDims& d, const at::TensorOptions& coords) {
  const auto opts = kTreeLayout[f].is_int ? coords.dtype(at::kInt) : coords;
  return kTreeLayout[f].zeroed ? at::zeros(field_sizes(f, d), opts)
                               : at::empty(field_sizes(f, d), opts);
}

std::vector<at::Tensor> new_normals(const MeshDims& d, const at::TensorOptions& opts) {
  return {new_field(kFaceNormals, d, opts), new_field(kVertexNormals, d, opts),
          new_field(kEdgeNormals, d, opts)};
}

// Fresh coordinate fields of a tree (kRefitFields).
void new_coordinates(const MeshDims& d, const at::TensorOptions& opts,
                     std::vector<at::Tensor>& tree) {
  for (int f : kRefitFields) tree[f] = new_field(f, d, opts);
}

// Every field of a tree, unfilled.
std::vector<at::Tensor> new_tree(const MeshDims& d, const at::TensorOptions& opts) {
  std::vector<at::Tensor> tree;
  for (int f = 0; f < kTreeFields; ++f) tree.push_back(new_field(f, d, opts));
  return tree;
}

std::vector<at::Tensor> refit_fields(const std::vector<at::Tensor>& tree) {
  std::vector<at::Tensor> out;
  for (int f : kRefitFields) out.push_back(tree[f]);
  return out;
}

void compute_normals(const char* op, const Mesh& m, const at::Tensor& verts,
                     const std::vector<at::Tensor>& out) {
  const NormalArrays n = normal_arrays(out[0], out[1], out[2]);
  run_on(
      op, verts, [&] { mesh_normals_cpu(m.dims, m.is_double, verts.data_ptr(), m.topo, n); },
      [&](void* stream) {
        return mesh_normals_cuda(m.dims, m.is_double, verts.data_ptr(), m.topo, n, stream);
      });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mesh_normals(const at::Tensor& verts,
                                                            at::TensorList topology) {
  const Mesh m = mesh_of("mesh_normals", verts, topology);
  const std::vector<at::Tensor> out = new_normals(m.dims, verts.options());
  compute_normals("mesh_normals", m, verts, out);
  return {out[0], out[1], out[2]};
}

BvhArrays arrays_of(const std::vector<at::Tensor>& t) {
  return {t[kBoxes].data_ptr(),
          t[kDipoles].data_ptr(),
          t[kLinks].data_ptr<int32_t>(),
          t[kLeaves].data_ptr<int32_t>(),
          t[kCounts].data_ptr<int32_t>(),
          t[kTris].data_ptr(),
          t[kPrimFace].data_ptr<int32_t>()};
}

// Fresh coordinates (triangles in leaf order, boxes, summaries, normals) for a tree's shape.
void refit_into(const char* op, const Mesh& m, const at::Tensor& verts,
                std::vector<at::Tensor>& tree) {
  const MeshDims& d = m.dims;
  const auto opts = verts.options();
  new_coordinates(d, opts, tree);
  compute_normals(op, m, verts, {tree[kFaceNormals], tree[kVertexNormals], tree[kEdgeNormals]});
  at::Tensor counters = at::zeros({d.batch, d.nodes()}, opts.dtype(at::kInt));
  const BvhArrays a = arrays_of(tree);
  run_on(
      op, verts,
      [&] {
        mesh_refit_cpu(d, m.is_double, verts.data_ptr(), m.topo, a, counters.data_ptr<int32_t>());
      },
      [&](void* stream) {
        return mesh_refit_cuda(d, m.is_double, verts.data_ptr(), m.topo, a,
                               counters.data_ptr<int32_t>(), stream);
      });
}

std::vector<at::Tensor> mesh_build(const at::Tensor& verts, at::TensorList topology,
                                   int64_t builder) {
  const char* op = "mesh_build";
  const Mesh m = mesh_of(op, verts, topology);
  OMNIFAST_CHECK_ARG(builder == kBuilderSah || builder == kBuilderLinear, op, "builder",
                     "0 (sah) or 1 (lbvh)", builder);
  OMNIFAST_CHECK_ARG(builder == kBuilderLinear || verts.is_cpu(), op, "builder",
                     "'lbvh' on CUDA (the SAH builder runs on the CPU)", "'sah'");
  const MeshDims& d = m.dims;
  std::vector<at::Tensor> tree = new_tree(d, verts.options());
  if (builder == kBuilderSah) {
    mesh_build_sah_cpu(d, m.is_double, verts.data_ptr(), m.topo, arrays_of(tree));
  } else {
    at::Tensor keys = at::empty({d.batch, d.faces}, verts.options().dtype(at::kLong));
    run_on(
        op, verts,
        [&] {
          mesh_morton_keys_cpu(d, m.is_double, verts.data_ptr(), m.topo, keys.data_ptr<int64_t>());
        },
        [&](void* stream) {
          return mesh_morton_keys_cuda(d, m.is_double, verts.data_ptr(), m.topo,
                                       keys.data_ptr<int64_t>(), stream);
        });
    // A stable sort of the whole batch at once: the mesh index in the keys' high half keeps the
    // meshes apart, and equal codes keep face order, so the tree is reproducible.
    auto [sorted, order] = at::sort(keys.view({-1}), /*stable=*/true, /*dim=*/0,
                                    /*descending=*/false);
    tree[kPrimFace] = order.remainder(d.faces).to(at::kInt).view({d.batch, d.faces}).contiguous();
    const BvhArrays a = arrays_of(tree);
    const int64_t* sorted_keys = sorted.data_ptr<int64_t>();
    run_on(
        op, verts, [&] { mesh_lbvh_links_cpu(d, sorted_keys, a); },
        [&](void* stream) { return mesh_lbvh_links_cuda(d, sorted_keys, a, stream); });
  }
  refit_into(op, m, verts, tree);
  return tree;
}

void check_tree(const char* op, const Mesh& m, const at::Tensor& verts, at::TensorList tree) {
  OMNIFAST_CHECK_ARG(tree.size() == static_cast<size_t>(kTreeFields), op, "tree",
                     std::to_string(kTreeFields) + " tensors (from omnifast.MeshIndex.build)",
                     tree.size());
  const MeshDims& d = m.dims;
  for (const at::Tensor& t : tree) {
    check_defined(op, "tree", t);
    check_same_device(op, "tree", t, "verts", verts);
    OMNIFAST_CHECK_ARG(t.is_contiguous(), op, "tree", "contiguous tensors", "a strided tensor");
  }
  for (int f = 0; f < kTreeFields; ++f) {
    const std::string name = std::string("tree ") + kTreeLayout[f].name;
    check_shape(op, name.c_str(), tree[f], field_sizes(f, d));
  }
  for (int f : kRefitFields)
    OMNIFAST_CHECK_ARG(tree[f].scalar_type() == verts.scalar_type(), op, "tree",
                       std::string("coordinates of the dtype of verts (") +
                           c10::toString(verts.scalar_type()) + ")",
                       tree[f].scalar_type());
}

// The tree's shape with new vertex positions: the same leaves, fresh boxes (no sort, no split).
std::vector<at::Tensor> mesh_refit(const at::Tensor& verts, at::TensorList topology,
                                   at::TensorList tree) {
  const char* op = "mesh_refit";
  const Mesh m = mesh_of(op, verts, topology);
  check_tree(op, m, verts, tree);
  std::vector<at::Tensor> refitted(tree.begin(), tree.end());
  refit_into(op, m, verts, refitted);
  return refit_fields(refitted);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mesh_closest_point(
    const at::Tensor& points, const at::Tensor& verts, at::TensorList topology, at::TensorList tree,
    int64_t sign_mode) {
  const char* op = "closest_point";
  const Mesh m = mesh_of(op, verts, topology);
  check_tree(op, m, verts, tree);
  check_defined(op, "points", points);
  check_same_device(op, "points", points, "verts", verts);
  OMNIFAST_CHECK_ARG(
      points.dim() == 3 && points.size(2) == 3 && points.size(0) == m.dims.batch, op, "points",
      "[B, N, 3] with the B of verts (" + std::to_string(m.dims.batch) + ")", shape_of(points));
  OMNIFAST_CHECK_ARG(
      points.scalar_type() == verts.scalar_type(), op, "points",
      std::string("of the dtype of verts (") + c10::toString(verts.scalar_type()) + ")",
      points.scalar_type());
  OMNIFAST_CHECK_ARG(sign_mode >= kSignNone && sign_mode <= kSignWinding, op, "sign",
                     "0 (none), 1 (pseudonormal) or 2 (winding)", sign_mode);
  const at::Tensor p = points.contiguous();
  const int64_t n = p.size(1);
  const auto opts = p.options();
  at::Tensor distance = at::empty({m.dims.batch, n}, opts);
  at::Tensor face = at::empty({m.dims.batch, n}, opts.dtype(at::kLong));
  at::Tensor bary = at::empty({m.dims.batch, n, 3}, opts);
  at::Tensor point = at::empty({m.dims.batch, n, 3}, opts);
  std::vector<at::Tensor> t(tree.begin(), tree.end());
  const BvhArrays a = arrays_of(t);
  const NormalArrays normals = normal_arrays(t[kFaceNormals], t[kVertexNormals], t[kEdgeNormals]);
  const QueryArrays q{p.data_ptr(),        n,
                      distance.data_ptr(), face.data_ptr<int64_t>(),
                      bary.data_ptr(),     point.data_ptr()};
  const int sign = static_cast<int>(sign_mode);
  run_on(
      op, p, [&] { mesh_closest_point_cpu(m.dims, m.is_double, m.topo, a, normals, sign, q); },
      [&](void* stream) {
        return mesh_closest_point_cuda(m.dims, m.is_double, m.topo, a, normals, sign, q, stream);
      });
  return {distance, face, bary, point};
}

}  // namespace
}  // namespace omnifast

TORCH_LIBRARY_IMPL(omnifast, CPU, m) {
  m.impl("mesh_normals", &omnifast::mesh_normals);
  m.impl("mesh_build", &omnifast::mesh_build);
  m.impl("mesh_refit", &omnifast::mesh_refit);
  m.impl("mesh_closest_point", &omnifast::mesh_closest_point);
}

#ifdef OMNIFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(omnifast, CUDA, m) {
  m.impl("mesh_normals", &omnifast::mesh_normals);
  m.impl("mesh_build", &omnifast::mesh_build);
  m.impl("mesh_refit", &omnifast::mesh_refit);
  m.impl("mesh_closest_point", &omnifast::mesh_closest_point);
}
#endif
