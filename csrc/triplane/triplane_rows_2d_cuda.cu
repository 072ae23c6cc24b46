// Tri-plane CUDA kernels: PlaneGradRows 2-D (triplane_kernels.cuh).
#define OMNIFAST_TRIPLANE_PASS_FILE
#include "triplane_kernels.cuh"

namespace omnifast {
namespace triplane_cuda {

OMNIFAST_TRIPLANE_PASS(kPlaneGradRows, 2);

}  // namespace triplane_cuda
}  // namespace omnifast
