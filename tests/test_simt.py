"""The SIMT build (OMNIFAST_SIMT=1): the CUDA kernels run on the CPU thread by thread. The CUDA
half of the other test files runs there as the "simt" device; this file checks the execution
itself: that the CUDA code paths ran, and that a defect planted in a kernel is reported."""
import os
import shutil
import subprocess

import pytest
import torch

import omnifast
from omnifast import _C_loader

from conftest import SIMT_READY, SIMT_SKIP_REASON

pytestmark = [pytest.mark.simt, pytest.mark.skipif(not SIMT_READY, reason=SIMT_SKIP_REASON)]

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "simt", "composite_driver.cpp")


def counts_of(fn):
    before = _C_loader.simt_stats()
    with _C_loader.simt_kernels():
        fn()
    after = _C_loader.simt_stats()
    return {k: after[k] - before[k] for k in after}


def test_cuda_code_paths_run_whole_blocks_shuffles_and_vector_atomics():
    planes = torch.randn(1, 3, 8, 6, 6, requires_grad=True)  # 8 channels: two float4 per texel
    coords = torch.rand(1, 100, 3) - 0.5

    def backward():
        out = omnifast.triplane_sample(planes, coords.requires_grad_())
        out.sum().backward()

    counts = counts_of(backward)
    assert counts["launches"] == 2  # the forward and the backward kernel, nothing on the CPU
    assert counts["threads"] % 256 == 0 and counts["threads"] >= 2 * 100 * 2
    assert counts["shuffles"] > 0  # the coordinate gradient's group sums
    assert counts["vector_atomics"] > 0  # sm_90's float4 atomics
    assert _C_loader.simt_stats()["launches"] >= counts["launches"]


def test_outside_the_context_the_cpu_loops_run():
    counts = counts_of(lambda: None)
    assert counts["launches"] == 0
    before = _C_loader.simt_stats()["launches"]
    omnifast.triplane_sample(torch.randn(1, 3, 4, 5, 5), torch.rand(1, 10, 3))
    assert _C_loader.simt_stats()["launches"] == before


def test_block_barriers_run_in_the_morton_reduction():
    verts = torch.rand(2, 40, 3, dtype=torch.float64)
    faces = torch.randint(0, 40, (60, 3), dtype=torch.int32)
    points = torch.rand(2, 30, 3, dtype=torch.float64)
    counts = counts_of(lambda: omnifast.closest_point(points, verts, faces))
    assert counts["barriers"] > 0 and counts["atomics"] > 0  # the bounds pass's arrivals


def build_driver(tmp_path, name, planted=None):
    """The composite kernels of a copy of csrc/ (with `planted` = (old, new) applied to
    composite_cuda.cu) linked with the driver."""
    csrc = tmp_path / name / "csrc"
    shutil.copytree(CSRC, csrc)
    if planted is not None:
        kernel = csrc / "composite" / "composite_cuda.cu"
        text = kernel.read_text()
        assert text.count(planted[0]) == 1, "the defect's place is not in composite_cuda.cu"
        kernel.write_text(text.replace(*planted))
    unit = tmp_path / name / "kernels.cpp"
    unit.write_text('#include "simt/simt.h"\n#include "composite/composite_cuda.cu"\n')
    binary = tmp_path / name / "driver"
    compiler = os.environ.get("CXX", "c++")
    subprocess.run([compiler, "-std=c++17", "-O0", f"-I{csrc}", f"-I{csrc / 'simt' / 'include'}",
                    f"-I{_C_loader.C.SIMT_CUDA_INCLUDE}", str(unit), DRIVER, "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    return subprocess.run([str(binary)], capture_output=True, text=True)


def test_a_planted_defect_is_reported(tmp_path):
    clean = build_driver(tmp_path, "clean")
    assert clean.returncode == 0 and clean.stdout.strip() == "ok", clean.stdout + clean.stderr
    # Without the rounding to whole warps, the last warp's lanes past the last ray exit before
    # the others reach the group sums' shuffles.
    planted = build_driver(tmp_path, "planted",
                           ("whole_warps(s.rays * lanes)", "s.rays * lanes"))
    assert planted.returncode == 1
    assert "divergent full-mask shuffle" in planted.stdout and "exited" in planted.stdout
