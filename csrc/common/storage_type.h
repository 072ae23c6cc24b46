// Storage types the kernels are instantiated for, named without ATen so .cu files can use them.
#pragma once

namespace omnifast {

enum class StorageType : int { kFloat32, kFloat64, kFloat16, kBFloat16 };

}  // namespace omnifast
