"""Builds omnifast._C: CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment:
  OMNIFAST_CUDA=0/1        force the CUDA kernels off/on (default: on when possible)
  TORCH_CUDA_ARCH_LIST     CUDA architectures (default "8.0;9.0": A100 and H100/H200)
  MAX_JOBS                 parallel compile jobs (default 2)
Install with `pip install --no-build-isolation -e .` so that the build uses the torch already
installed instead of fetching another one into an isolated build environment.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # an isolated build, or no torch yet
    sys.exit(
        "omnifast builds against the installed torch: install torch first, then run "
        "`pip install --no-build-isolation -e .`"
    )

DEFAULT_ARCHS = "8.0;9.0"


def want_cuda():
    flag = os.environ.get("OMNIFAST_CUDA", "").strip()
    possible = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "0":
        return False
    if flag == "1":
        if not possible:
            sys.exit(
                "OMNIFAST_CUDA=1 but this torch has no CUDA "
                f"(torch.version.cuda={torch.version.cuda}) or nvcc was not found "
                f"(CUDA_HOME={cpp_extension.CUDA_HOME})"
            )
        return True
    return possible


def extension():
    # Globbed, so setup.py and CMakeLists.txt never keep two source lists.
    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    # The language standard is the one this torch builds its extensions with. No code here reads
    # floating-point exception flags; without trapping math the compiler may turn the selects of
    # the CPU loops' exp/log1p into vector blends (csrc/common/vector_math.h).
    # Hidden symbols by default, as pybind11 modules are built: only PyInit__C is exported.
    cxx_flags = ["-O3", "-fno-trapping-math", "-fvisibility=hidden"]
    link_flags = []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for is header-inline over OpenMP: without -fopenmp it runs serially.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if not want_cuda():
        return cpp_extension.CppExtension(
            "omnifast._C", cpp_sources, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    defines = ["-DOMNIFAST_WITH_CUDA", f'-DOMNIFAST_CUDA_ARCHS="{archs}"']
    return cpp_extension.CUDAExtension(
        "omnifast._C",
        cpp_sources + cuda_sources,
        extra_compile_args={
            "cxx": cxx_flags + defines,
            "nvcc": ["-O3", "-lineinfo"] + defines,
        },
        extra_link_args=link_flags,
    )


os.environ.setdefault("MAX_JOBS", "2")

setup(
    packages=find_packages(include=["omnifast", "omnifast.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
