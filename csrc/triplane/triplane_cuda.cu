// Entry points of the tri-plane CUDA kernels (triplane_launch.h). The kernels of each pass are
// compiled in files of their own (triplane_kernels.cuh); the row keys are here.
#include "triplane_kernels.cuh"

namespace omnifast {
namespace {

using triplane_cuda::launch;
using triplane_cuda::Pass;

template <int DIMS, typename acc_t>
__global__ void row_keys_kernel(TriplaneShape s, TriplaneTensors t, int64_t* keys) {
  const auto coords = static_cast<const acc_t*>(t.coords);
  OMNIFAST_THREAD_LOOP(i, s.batch * 3 * s.points) {
    const int64_t np = i / s.points;
    keys[i] = row_sort_key<DIMS>(s, coords, t.coord_strides, np / 3, static_cast<int>(np % 3),
                                 i % s.points);
  }
}

template <Pass PASS>
const char* launch_pass(const TriplaneShape& s, StorageType type, const TriplaneTensors& t,
                        void* stream) {
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  return s.dims == 2 ? launch<PASS, 2>(s, type, t, cuda_stream)
                     : launch<PASS, 3>(s, type, t, cuda_stream);
}

}  // namespace

const char* triplane_forward_cuda(const TriplaneShape& s, StorageType type,
                                  const TriplaneTensors& t, void* stream) {
  return launch_pass<Pass::kForward>(s, type, t, stream);
}

const char* triplane_backward_cuda(const TriplaneShape& s, StorageType type,
                                   const TriplaneTensors& t, void* stream) {
  return launch_pass<Pass::kBackward>(s, type, t, stream);
}

const char* triplane_double_backward_cuda(const TriplaneShape& s, StorageType type,
                                          const TriplaneTensors& t, void* stream) {
  return launch_pass<Pass::kDoubleBackward>(s, type, t, stream);
}

const char* triplane_plane_grad_rows_cuda(const TriplaneShape& s, StorageType type,
                                          const TriplaneTensors& t, void* stream) {
  return launch_pass<Pass::kPlaneGradRows>(s, type, t, stream);
}

const char* triplane_row_keys_cuda(const TriplaneShape& s, StorageType type,
                                   const TriplaneTensors& t, int64_t* keys, void* stream) {
  const int64_t total = s.batch * 3 * s.points;
  if (total == 0) return nullptr;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  // Keys read only the coordinates, stored as double for float64 and as float otherwise.
  const bool is_double = type == StorageType::kFloat64;
  return launched([&] {
    if (s.dims == 2 && is_double) {
      OMNIFAST_LAUNCH(grid_for(total), kThreads, cuda_stream, row_keys_kernel<2, double>)
      (s, t, keys);
    } else if (s.dims == 2) {
      OMNIFAST_LAUNCH(grid_for(total), kThreads, cuda_stream, row_keys_kernel<2, float>)
      (s, t, keys);
    } else if (is_double) {
      OMNIFAST_LAUNCH(grid_for(total), kThreads, cuda_stream, row_keys_kernel<3, double>)
      (s, t, keys);
    } else {
      OMNIFAST_LAUNCH(grid_for(total), kThreads, cuda_stream, row_keys_kernel<3, float>)
      (s, t, keys);
    }
  });
}

}  // namespace omnifast
