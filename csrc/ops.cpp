// The omnifast operator library: every schema lives here. Implementations register per dispatch
// key next to their glue (csrc/<op>/<op>_ops.cpp); autograd is registered in Python
// (omnifast/ops/), shape functions for tracing in Python or, for the mesh ops, as Meta kernels.
// The integer arguments take the values of the enums omnifast._C exports (csrc/module.cpp).
#include <torch/library.h>

TORCH_LIBRARY(
    omnifast,
    m) {  // [B, P, C, *spatial] -> contiguous [B, P, *spatial, C] (a copy; never an alias of x).
  m.def("feature_last(Tensor x) -> Tensor");
  // planes: feature-last [N, 3, H, W, C] or [N, 3, D, H, W, C]; axes: 3 x dims coordinate
  // components (plane-major); scale: 3 factors (2 / box_warp); reduce: _C.TriplaneReduce
  // (none: [N, 3, M, C]; sum, mean: [N, M, C]).
  m.def(
      "triplane_sample(Tensor planes, Tensor coords, int[] axes, float[] scale, int reduce)"
      " -> Tensor");
  m.def(
      "triplane_sample_backward(Tensor grad_out, Tensor planes, Tensor coords, int[] axes,"
      " float[] scale, int reduce, bool want_planes, bool want_coords) -> (Tensor, Tensor)");
  m.def(
      "triplane_sample_double_backward(Tensor? grad_grad_planes, Tensor? grad_grad_coords,"
      " Tensor grad_out, Tensor planes, Tensor coords, int[] axes, float[] scale, int reduce,"
      " bool want_grad_out, bool want_planes, bool want_coords) -> (Tensor, Tensor, Tensor)");
  // The backward's plane gradient added into grad_planes (feature-last planes' shape, the
  // accumulation type); it reads no plane values.
  m.def(
      "triplane_sample_plane_grad_add_(Tensor(a!) grad_planes, Tensor grad_out, Tensor coords,"
      " int[] axes, float[] scale, int reduce) -> ()");
  // Fused SDF-to-density compositing over rays: features [R, S, C], field/depths [R, S].
  // Returns (features [R, C], opacity [R], depth = sum(w z) / opacity [R], weights [R, L],
  // log transmittance [R] (float64, kept for the backward)).
  m.def(
      "composite(Tensor features, Tensor field, Tensor depths, Tensor? beta,"
      " Tensor? density_delta, int field_type, int mode, bool want_weights)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "composite_backward(Tensor grad_features, Tensor grad_opacity, Tensor grad_depth,"
      " Tensor? grad_weights, Tensor features, Tensor field, Tensor depths, Tensor? beta,"
      " Tensor? density_delta, Tensor opacity, Tensor depth_raw, Tensor log_transmittance,"
      " int field_type, int mode) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // EG3D's importance sampling, fused: depths [R, S], weights [R, L] (L = S - 1 or S), sorted
  // uniforms u [R, n] -> sorted depths [R, n]. Merging two sorted depth lists -> positions in
  // their concatenation [R, S + n], coarse first on ties.
  m.def("importance_sample(Tensor depths, Tensor weights, Tensor u) -> Tensor");
  m.def("merge_order(Tensor coarse, Tensor fine) -> Tensor");
  // Closest points on B meshes sharing one face list. topology: the int32 tensors of
  // omnifast.MeshIndex (_C.TOPOLOGY_FIELDS). A tree is the list mesh_build returns
  // (_C.TREE_FIELDS; mesh_refit returns _C.REFIT_FIELDS); builder: _C.MeshBuilder; sign:
  // _C.SignMode. Returns distance [B, N], face [B, N] int64, barycentric weights [B, N, 3] and
  // closest points [B, N, 3].
  m.def("mesh_normals(Tensor verts, Tensor[] topology) -> (Tensor, Tensor, Tensor)");
  m.def("mesh_build(Tensor verts, Tensor[] topology, int builder) -> Tensor[]");
  m.def("mesh_refit(Tensor verts, Tensor[] topology, Tensor[] tree) -> Tensor[]");
  m.def(
      "mesh_closest_point(Tensor points, Tensor verts, Tensor[] topology, Tensor[] tree,"
      " int sign) -> (Tensor, Tensor, Tensor, Tensor)");
  // softplus(x) = log(1 + exp(beta x)) / beta, x where beta x > threshold (PyTorch's); results
  // below the smallest normal number are 0. Any shape; a contiguous result.
  m.def("softplus(Tensor x, float beta, float threshold) -> Tensor");
  // EG3D's bias_act (leaky ReLU or linear): y = clamp((x + bias) * slope, +-clamp), slope
  // `positive` where x + bias > 0, else `negative` (both times the gain); x [N, C, *], bias [C].
  // Its gradient from the output alone: grad * slope where |y| < clamp, else 0.
  m.def(
      "bias_act(Tensor x, Tensor? bias, float positive, float negative, float? clamp)"
      " -> Tensor");
  m.def(
      "bias_act_grad(Tensor grad, Tensor y, float positive, float negative, float? clamp)"
      " -> Tensor");
  // The plane gradient in a fixed order (CUDA's deterministic path; CPU twin for tests).
  m.def(
      "triplane_sample_plane_grad_rows(Tensor grad_out, Tensor planes, Tensor coords,"
      " Tensor? grad_grad_coords, int[] axes, float[] scale, int reduce) -> Tensor");
}
