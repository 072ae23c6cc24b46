// Large CPU outputs that a kernel writes whole, once. Fresh allocations of this size are new
// mappings, so the first write page-faults every 4 KiB and the faults can cost more than the
// kernel itself; asking for transparent huge pages (a hint the system may ignore) makes that one
// fault per 2 MiB. See benchmarks/NOTES.md.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace omnifast {

inline at::Tensor empty_output(at::IntArrayRef shape, const at::TensorOptions& options) {
  at::Tensor t = at::empty(shape, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (t.is_cpu() && t.nbytes() >= 2 * kHugePage) {
    const auto start = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t end = (start + t.nbytes()) & ~(kHugePage - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace omnifast
