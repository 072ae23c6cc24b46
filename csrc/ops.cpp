// The omnifast operator library: every schema lives here. Implementations register per dispatch
// key next to their glue (csrc/<op>/<op>_ops.cpp); autograd and fake kernels are registered in
// Python (omnifast/ops/).
#include <Python.h>
#include <torch/library.h>

#include <string>

#ifndef OMNIFAST_CUDA_ARCHS
#define OMNIFAST_CUDA_ARCHS ""
#endif

namespace omnifast {
namespace {

// Which backends this binary carries, for omnifast.info(): "cpu" or "cpu,cuda:<archs>".
std::string build_info() {
#ifdef OMNIFAST_WITH_CUDA
  return std::string("cpu,cuda:") + OMNIFAST_CUDA_ARCHS;
#else
  return "cpu";
#endif
}

}  // namespace
}  // namespace omnifast

TORCH_LIBRARY(omnifast, m) {
  m.def("build_info() -> str", &omnifast::build_info);
  // [B, P, C, *spatial] -> contiguous [B, P, *spatial, C] (a copy; never an alias of x).
  m.def("feature_last(Tensor x) -> Tensor");
  // planes: feature-last [N, 3, H, W, C] or [N, 3, D, H, W, C]; axes: 3 x dims coordinate
  // components (plane-major); scale: 3 factors (2 / box_warp); reduce: 0 none ([N, 3, M, C]),
  // 1 sum, 2 mean ([N, M, C]).
  m.def("triplane_sample(Tensor planes, Tensor coords, int[] axes, float[] scale, int reduce)"
        " -> Tensor");
  m.def("triplane_sample_backward(Tensor grad_out, Tensor planes, Tensor coords, int[] axes,"
        " float[] scale, int reduce, bool want_planes, bool want_coords) -> (Tensor, Tensor)");
  m.def("triplane_sample_double_backward(Tensor? grad_grad_planes, Tensor? grad_grad_coords,"
        " Tensor grad_out, Tensor planes, Tensor coords, int[] axes, float[] scale, int reduce,"
        " bool want_grad_out, bool want_planes, bool want_coords) -> (Tensor, Tensor, Tensor)");
  // Fused SDF-to-density compositing over rays: features [R, S, C], field/depths [R, S].
  // Returns (features [R, C], opacity [R], depth = sum(w z) / opacity [R], weights [R, L],
  // log transmittance [R] (float64, kept for the backward)).
  m.def("composite(Tensor features, Tensor field, Tensor depths, Tensor? beta,"
        " Tensor? density_delta, int field_type, int mode, bool want_weights)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("composite_backward(Tensor grad_features, Tensor grad_opacity, Tensor grad_depth,"
        " Tensor? grad_weights, Tensor features, Tensor field, Tensor depths, Tensor? beta,"
        " Tensor? density_delta, Tensor opacity, Tensor depth_raw, Tensor log_transmittance,"
        " int field_type, int mode) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // EG3D's importance sampling, fused: depths [R, S], weights [R, L] (L = S - 1 or S), sorted
  // uniforms u [R, n] -> sorted depths [R, n]. Merging two sorted depth lists -> positions in
  // their concatenation [R, S + n], coarse first on ties.
  m.def("importance_sample(Tensor depths, Tensor weights, Tensor u) -> Tensor");
  m.def("merge_order(Tensor coarse, Tensor fine) -> Tensor");
  // Closest points on B meshes sharing one face list. topology: six int32 tensors from
  // omnifast.MeshIndex (faces, face edges, vertex -> corner and edge -> face CSR lists). A tree
  // is the list mesh_build returns (boxes, summaries, links, leaves, counts, triangles in leaf
  // order, their face ids, face/vertex/edge normals); builder 0: SAH (CPU), 1: linear (Morton).
  // sign: 0 none, 1 pseudonormal, 2 winding number. Returns distance [B, N], face [B, N] int64,
  // barycentric weights [B, N, 3] and closest points [B, N, 3].
  m.def("mesh_normals(Tensor verts, Tensor[] topology) -> (Tensor, Tensor, Tensor)");
  m.def("mesh_build(Tensor verts, Tensor[] topology, int builder) -> Tensor[]");
  m.def("mesh_refit(Tensor verts, Tensor[] topology, Tensor[] tree) -> Tensor[]");
  m.def("mesh_closest_point(Tensor points, Tensor verts, Tensor[] topology, Tensor[] tree,"
        " int sign) -> (Tensor, Tensor, Tensor, Tensor)");
  // The plane gradient in a fixed order (CUDA's deterministic path; CPU twin for tests).
  m.def("triplane_sample_plane_grad_rows(Tensor grad_out, Tensor planes, Tensor coords,"
        " Tensor? grad_grad_coords, int[] axes, float[] scale, int reduce) -> Tensor");
}

// Importing omnifast._C loads this library so the registrations above run; the module itself is
// empty (no pybind11, no CPython API beyond this).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                      nullptr,               nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
