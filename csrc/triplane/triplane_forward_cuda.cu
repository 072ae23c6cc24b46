// Tri-plane CUDA kernels: Forward 2-D, Forward 3-D (triplane_kernels.cuh).
#define OMNIFAST_TRIPLANE_PASS_FILE
#include "triplane_kernels.cuh"

namespace omnifast {
namespace triplane_cuda {

OMNIFAST_TRIPLANE_PASS(kForward, 2);
OMNIFAST_TRIPLANE_PASS(kForward, 3);

}  // namespace triplane_cuda
}  // namespace omnifast
