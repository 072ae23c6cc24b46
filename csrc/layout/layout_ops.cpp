// feature_last: [B, P, C, *spatial] -> contiguous [B, P, *spatial, C], the layout the sampling
// kernels read. PyTorch's generic permute-copy walks the source in an order that thrashes the
// cache once the planes outgrow it; the CPU copy here goes tile by tile instead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"

namespace omnifast {
namespace {

constexpr int64_t kTile = 256;  // texels per tile: a tile's C channels stay in L1/L2

std::vector<int64_t> moved_shape(const at::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  const int64_t channels = shape[2];
  shape.erase(shape.begin() + 2);
  shape.push_back(channels);
  return shape;
}

void check_input(const at::Tensor& x) {
  check_defined("feature_last", "x", x);
  OMNIFAST_CHECK_ARG(x.dim() >= 4, "feature_last", "x", "[B, P, C, *spatial] (4 dims or more)",
                     shape_of(x));
}

at::Tensor feature_last_cpu(const at::Tensor& x) {
  check_input(x);
  const at::Tensor src = x.contiguous();
  at::Tensor out = at::empty(moved_shape(x), x.options());
  const int64_t outer = x.size(0) * x.size(1), channels = x.size(2);
  const int64_t texels = outer == 0 || channels == 0 ? 0 : src.numel() / (outer * channels);
  const int64_t tiles = (texels + kTile - 1) / kTile;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "feature_last", [&] {
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, outer * tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t o = task / tiles, t0 = (task % tiles) * kTile;
        const int64_t t1 = std::min(t0 + kTile, texels);
        const scalar_t* block_in = in + o * channels * texels;
        scalar_t* block_out = dst + o * texels * channels;
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t t = t0; t < t1; ++t) block_out[t * channels + c] = block_in[c * texels + t];
      }
    });
  });
  return out;
}

at::Tensor feature_last_generic(const at::Tensor& x) {
  check_input(x);
  return x.movedim(2, -1).contiguous();
}

}  // namespace
}  // namespace omnifast

TORCH_LIBRARY_IMPL(omnifast, CPU, m) { m.impl("feature_last", &omnifast::feature_last_cpu); }

#ifdef OMNIFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(omnifast, CUDA, m) { m.impl("feature_last", &omnifast::feature_last_generic); }
#endif
