// Argument checks for the torch glue: every message names the op, the argument, what was
// expected and what was given, and fires before any kernel runs.
#pragma once

#include <ATen/ATen.h>

#include <sstream>
#include <string>

#include "storage_type.h"

namespace omnifast {

inline bool is_16bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

inline StorageType storage_type_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return StorageType::kFloat32;
    case at::kDouble:
      return StorageType::kFloat64;
    case at::kHalf:
      return StorageType::kFloat16;
    default:
      return StorageType::kBFloat16;
  }
}

inline std::string shape_of(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

#define OMNIFAST_CHECK_ARG(cond, op, arg, expected, actual) \
  TORCH_CHECK((cond), "omnifast.", op, ": ", arg, " must be ", expected, ", got ", actual)

inline void check_defined(const char* op, const char* arg, const at::Tensor& t) {
  OMNIFAST_CHECK_ARG(t.defined(), op, arg, "a tensor", "None");
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* ref_arg, const at::Tensor& ref) {
  OMNIFAST_CHECK_ARG(t.device() == ref.device(), op, arg,
                     std::string("on the device of ") + ref_arg + " (" + ref.device().str() + ")",
                     t.device().str());
}

inline void check_shape(const char* op, const char* arg, const at::Tensor& t,
                        at::IntArrayRef expected) {
  std::ostringstream want;
  want << "of shape " << expected;
  OMNIFAST_CHECK_ARG(t.sizes() == expected, op, arg, want.str(), shape_of(t));
}

}  // namespace omnifast
