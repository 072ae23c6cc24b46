// Tri-plane CUDA kernels: Backward 3-D (triplane_kernels.cuh).
#define OMNIFAST_TRIPLANE_PASS_FILE
#include "triplane_kernels.cuh"

namespace omnifast {
namespace triplane_cuda {

OMNIFAST_TRIPLANE_PASS(kBackward, 3);

}  // namespace triplane_cuda
}  // namespace omnifast
