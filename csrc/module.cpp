// omnifast._C, a pybind11 module. Importing it loads the operator library (the TORCH_LIBRARY
// registrations in ops.cpp and csrc/<op>/<op>_ops.cpp, which give the ops autograd,
// torch.compile and opcheck support); the module itself exports what Python and C++ must agree
// on, defined once here from the C++ enums and layout constants: Python reads them and never
// mirrors a number or a position.
#include <torch/extension.h>

#include "composite/composite.h"
#include "mesh/mesh_launch.h"
#include "triplane/triplane.h"
#ifdef OMNIFAST_WITH_SIMT
#include "simt/simt_control.h"
#endif

#ifndef OMNIFAST_CUDA_ARCHS
#define OMNIFAST_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

template <size_t N>
py::tuple names(const char* const (&list)[N]) {
  py::tuple out(N);
  for (size_t i = 0; i < N; ++i) out[i] = list[i];
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace omnifast;
  m.doc() = "omnifast's compiled kernels: build information, enums and layouts";

#ifdef OMNIFAST_WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
#ifdef OMNIFAST_WITH_SIMT
  // The SIMT build: the CUDA kernels run on the CPU (csrc/simt/simt.h) for CPU tensors while
  // the routing is on.
  m.attr("WITH_SIMT") = true;
  m.attr("SIMT_CUDA_INCLUDE") = OMNIFAST_SIMT_CUDA_INCLUDE;
  m.def(
      "_simt_route", [](bool on) { return simt_routing().exchange(on); },
      "Routes CPU tensors through the CUDA launchers (or back); returns the previous setting.");
  m.def("_simt_routing", [] { return simt_routing().load(); }, "Whether the routing is on.");
  m.def("_simt_seed", &simt_set_seed, "Seeds the order blocks and threads run in.");
  m.def(
      "_simt_stats",
      [] {
        const SimtStats s = simt_stats();
        py::dict d;
        d["launches"] = s.launches;
        d["blocks"] = s.blocks;
        d["threads"] = s.threads;
        d["barriers"] = s.barriers;
        d["shuffles"] = s.shuffles;
        d["atomics"] = s.atomics;
        d["vector_atomics"] = s.vector_atomics;
        return d;
      },
      "What the emulated kernels did since the module was loaded.");
#else
  m.attr("WITH_SIMT") = false;
#endif
  m.attr("CUDA_ARCHS") = OMNIFAST_CUDA_ARCHS;  // as given to the build, e.g. "8.0;9.0"

  // Option values taken by the operators' integer arguments, named as the Python API names them.
  py::enum_<TriplaneReduce>(m, "TriplaneReduce")
      .value("none", kReduceNone)
      .value("sum", kReduceSum)
      .value("mean", kReduceMean);
  py::enum_<CompositeField>(m, "CompositeField")
      .value("sdf", kFieldSdf)
      .value("sdf_laplace", kFieldSdfLaplace)
      .value("density", kFieldDensity);
  py::enum_<CompositeMode>(m, "CompositeMode")
      .value("midpoint", kModeMidpoint)
      .value("absorption", kModeAbsorption);
  py::enum_<SignMode>(m, "SignMode")
      .value("none", kSignNone)
      .value("pseudonormal", kSignPseudonormal)
      .value("winding", kSignWinding);
  py::enum_<MeshBuilder>(m, "MeshBuilder").value("sah", kBuilderSah).value("lbvh", kBuilderLinear);

  // The mesh tree: its tensors in order, each as (name, sizes, dtype) where a size is a number
  // or one of "B" (meshes), "nodes" (max(F - 1, 1)), "F", "V", "E", and the dtype "int32" or
  // "coords" (that of the vertices); which of them a refit renews; the topology tensors in order.
  py::tuple layout(static_cast<size_t>(kTreeFields));
  for (int f = 0; f < kTreeFields; ++f) {
    const TreeFieldLayout& field = kTreeLayout[f];
    py::tuple sizes(field.rank);
    for (int i = 0; i < field.rank; ++i) {
      switch (field.sizes[i]) {
        case kSizeBatch:
          sizes[i] = "B";
          break;
        case kSizeNodes:
          sizes[i] = "nodes";
          break;
        case kSizeFaces:
          sizes[i] = "F";
          break;
        case kSizeVerts:
          sizes[i] = "V";
          break;
        case kSizeEdges:
          sizes[i] = "E";
          break;
        default:
          sizes[i] = field.sizes[i];
      }
    }
    layout[f] = py::make_tuple(field.name, sizes, field.is_int ? "int32" : "coords");
  }
  m.attr("TREE_LAYOUT") = layout;
  py::tuple refit(std::size(kRefitFields));
  for (size_t i = 0; i < std::size(kRefitFields); ++i) refit[i] = kTreeLayout[kRefitFields[i]].name;
  m.attr("REFIT_FIELDS") = refit;
  m.attr("TOPOLOGY_FIELDS") = names(kTopologyFieldNames);
}
