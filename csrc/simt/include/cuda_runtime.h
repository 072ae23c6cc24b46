// The CUDA runtime of a SIMT build: the emulation (csrc/simt/simt.h) stands in for it.
#pragma once

#include "../simt.h"
