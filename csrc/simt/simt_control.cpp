// The SIMT runtime's controls, for the Python module (csrc/module.cpp).
#include "simt.h"

namespace omnifast {

void simt_set_seed(uint64_t seed) {
  simt::Runtime& r = simt::runtime();
  const std::lock_guard<std::mutex> lock(r.launch_mutex);
  r.rng.seed(seed);
}

SimtStats simt_stats() {
  simt::Runtime& r = simt::runtime();
  const std::lock_guard<std::mutex> lock(r.launch_mutex);
  return r.stats;
}

}  // namespace omnifast
