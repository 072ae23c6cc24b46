"""Builds omnifast._C: CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment:
  OMNIFAST_CUDA=0/1        force the CUDA kernels off/on (default: on when possible)
  OMNIFAST_SIMT=1          the SIMT build: the CUDA kernels compiled by the host compiler against
                           csrc/simt/simt.h, run on the CPU thread by thread (for the tests; needs
                           the CUDA toolkit's headers, not a GPU nor a CUDA torch)
  OMNIFAST_SANITIZE=1      with OMNIFAST_SIMT=1: AddressSanitizer and UndefinedBehaviorSanitizer
  TORCH_CUDA_ARCH_LIST     CUDA architectures (default "8.0;9.0": A100 and H100/H200)
  MAX_JOBS                 parallel compile jobs (default 2)
Install with `pip install --no-build-isolation -e .` so that the build uses the torch already
installed instead of fetching another one into an isolated build environment.
"""
import glob
import os
import subprocess
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


def cuda_include_dir():
    """The CUDA toolkit's headers (16-bit and vector types), which the SIMT build compiles with."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME,
             "/usr/local/cuda"]
    for home in filter(None, homes):
        if os.path.isfile(os.path.join(home, "include", "cuda_fp16.h")):
            return os.path.join(home, "include")
    sys.exit("OMNIFAST_SIMT=1 needs the CUDA toolkit's headers (cuda_fp16.h): none under "
             f"CUDA_HOME, CUDA_PATH or /usr/local/cuda (tried {[h for h in homes if h]})")


def shared_cxx_runtime():
    """Link flags that keep the C++ runtime shared. Where the compiler finds libstdc++.a but no
    libstdc++.so (a toolchain without its development link), the linker copies the runtime into
    _C, and that private copy's streams crash on first use (its locale is never set up): every
    error message and shape check. Then the libstdc++.so.6 this process runs on is named."""
    if not sys.platform.startswith("linux"):
        return []
    compiler = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run([compiler, "-print-file-name=libstdc++.so"], capture_output=True,
                               text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    if os.path.isabs(found) and os.path.exists(found):
        return []
    with open("/proc/self/maps") as maps:  # torch is imported: its libstdc++ is loaded
        loaded = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    if not loaded:
        sys.exit(f"{compiler} finds no shared libstdc++ (libstdc++.so) and none is loaded; "
                 "install the compiler's libstdc++ development files")
    runtime = sorted(loaded)[0]
    print(f"omnifast: {compiler} has no libstdc++.so; linking {runtime}", file=sys.stderr)
    return [runtime]


def simt_sources(cuda_sources):
    """One C++ file per .cu file, in build/: the SIMT runtime first, then the unchanged kernels."""
    out_dir = os.path.join("build", "simt-sources")
    os.makedirs(out_dir, exist_ok=True)
    sources = []
    for cu in cuda_sources:
        relative = os.path.relpath(cu, "csrc")
        path = os.path.join(out_dir, relative.replace(os.sep, "_")[: -len(".cu")] + ".cpp")
        text = f'#include "simt/simt.h"\n#include "{relative}"\n'
        if not os.path.isfile(path) or open(path).read() != text:  # unchanged: no rebuild
            with open(path, "w") as f:
                f.write(text)
        sources.append(path)
    return sources


def simt_extension(cpp_sources, cuda_sources, cxx_flags, link_flags):
    here = os.path.dirname(os.path.abspath(__file__))
    cuda_include = cuda_include_dir()
    # The toolkit headers used, recorded for the tests that compile kernels of their own.
    flags = cxx_flags + ["-DOMNIFAST_WITH_SIMT", f'-DOMNIFAST_SIMT_CUDA_INCLUDE="{cuda_include}"']
    if os.environ.get("OMNIFAST_SANITIZE", "").strip() == "1":
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                    "-fno-sanitize-recover=undefined"]
        flags = [f for f in flags if f != "-O3"] + ["-O1", "-g"] + sanitize
        link_flags = link_flags + sanitize
    return cpp_extension.CppExtension(
        "omnifast._C",
        cpp_sources + simt_sources(cuda_sources),
        # the runtime's stand-ins (cuda_runtime.h, cuda/atomic) before the toolkit's headers
        include_dirs=[os.path.join(here, "csrc"), os.path.join(here, "csrc", "simt", "include"),
                      cuda_include],
        extra_compile_args={"cxx": flags},
        extra_link_args=link_flags,
    )


def extension():
    # Globbed, so setup.py and CMakeLists.txt never keep two source lists. csrc/simt/ is the SIMT
    # build's runtime, compiled into that build alone.
    simt = os.environ.get("OMNIFAST_SIMT", "").strip() == "1"
    cpp_sources = sorted(f for f in glob.glob("csrc/**/*.cpp", recursive=True)
                         if simt or not f.startswith(os.path.join("csrc", "simt", "")))
    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    # The language standard is the one this torch builds its extensions with. No code here reads
    # floating-point exception flags; without trapping math the compiler may turn the selects of
    # the CPU loops' exp/log1p into vector blends (csrc/common/vector_math.h).
    # Hidden symbols by default, as pybind11 modules are built: only PyInit__C is exported.
    cxx_flags = ["-O3", "-fno-trapping-math", "-fvisibility=hidden"]
    link_flags = shared_cxx_runtime()
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for is header-inline over OpenMP: without -fopenmp it runs serially.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if simt:
        if os.environ.get("OMNIFAST_CUDA", "").strip() == "1":
            sys.exit("OMNIFAST_SIMT=1 runs the CUDA kernels on the CPU and OMNIFAST_CUDA=1 builds "
                     "them for a GPU: set one of them")
        return simt_extension(cpp_sources, cuda_sources, cxx_flags, link_flags)
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
