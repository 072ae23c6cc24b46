// What the torch glue and the Python module see of the SIMT build (plain C++, no CUDA names):
// the switch that routes CPU tensors through the CUDA launchers, the scheduling seed and counts
// of what the emulated kernels did.
#pragma once

#include <atomic>
#include <cstdint>

namespace omnifast {

constexpr uint64_t kDefaultSeed = 12345;

struct SimtStats {
  int64_t launches = 0, blocks = 0, threads = 0, barriers = 0, shuffles = 0, atomics = 0,
          vector_atomics = 0;
};

// On: the ops hand CPU tensors to the CUDA launchers (host memory standing in for device
// memory) instead of the CPU twins. Off by default.
inline std::atomic<bool>& simt_routing() {
  static std::atomic<bool> on{false};
  return on;
}

// simt_control.cpp
void simt_set_seed(uint64_t seed);  // the order blocks and threads run in from now on
SimtStats simt_stats();             // totals since the module was loaded

}  // namespace omnifast
