"""pytest-benchmark suite for one training render of the OmniAvatar renderer (cases shared with
`omnifast bench render`): every contender in the same run, time and peak memory, with the
floors of the render issues, forward + backward with EG3D's 48 + 48 samples:
- at 128^2, omnifast at least 1.5x faster than the reference backend with at most half its
  peak memory, and at least 1.5x faster than the reference wrapped in torch.utils.checkpoint
  over chunks of rays (the strongest plain-PyTorch setup) at no more memory;
- at 512^2, the proposal sampler (24 samples per ray, its probe included) at least 3x faster
  than omnifast's dense render with at most a third of its peak memory;
- at least twice the pixels of the reference in the same memory budget.

    python -m pytest benchmarks/test_bench_render.py --benchmark-json=out.json
"""
import pytest
import torch

import omnifast
from omnifast.bench.measure import return_large_blocks
from omnifast.bench.render import OMNIFAST, PROPOSAL, RenderBench, Setup, max_resolution, render_cases

DEVICE = "cuda" if torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"] else "cpu"
CASES = [c for c in render_cases(DEVICE) if (c.coarse, c.fine) == (48, 48)]
SPEED_FLOOR, MEMORY_FLOOR = 1.5, 0.5
PROPOSAL_SPEED_FLOOR, PROPOSAL_MEMORY_FLOOR = 3.0, 1 / 3
REFERENCE, CHECKPOINT = Setup("reference"), Setup("reference+checkpoint")
ROWS = []


@pytest.fixture(scope="module")
def bench():
    return_large_blocks()
    return RenderBench(DEVICE)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_render_forward_backward(benchmark, bench, case):
    runs = 3 if DEVICE == "cuda" else 1
    got = {s: bench.measure(case, s, "forward+backward", runs) for s in case.setups if s.warp == "sdf"}
    for setup, m in got.items():
        ROWS.append({"contender": setup.name, "resolution": case.resolution, "pass": "forward+backward",
                     "batch": case.batch, "samples_per_ray": [case.coarse, case.fine], **m})
    ours = got[OMNIFAST]
    benchmark.extra_info.update(device=DEVICE, case=case.name,
                                **{f"{s.name}_{k}": m[k] for s, m in got.items() for k in ("ms", "peak_bytes")})
    benchmark.pedantic(bench.runner(case, OMNIFAST, "forward+backward"), rounds=1, warmup_rounds=0)
    if case.resolution == 128:
        check_floor(case, "omnifast", ours, REFERENCE.name, got[REFERENCE], SPEED_FLOOR, MEMORY_FLOOR)
        check_floor(case, "omnifast", ours, CHECKPOINT.name, got[CHECKPOINT], SPEED_FLOOR, 1.0)
    if case.resolution == 512:
        check_floor(case, PROPOSAL.name, got[PROPOSAL], "omnifast", ours, PROPOSAL_SPEED_FLOOR, PROPOSAL_MEMORY_FLOOR)


def check_floor(case, name, fast, other, slow, speed_floor, memory_floor):
    """``fast`` at least ``speed_floor`` times faster than ``slow`` with at most ``memory_floor``
    of its peak."""
    speedup = slow["ms"] / fast["ms"]
    assert speedup >= speed_floor, f"{case.name}: {name} {speedup:.2f}x faster than {other} < {speed_floor}x"
    if fast["peak_bytes"] and slow["peak_bytes"]:
        assert fast["peak_bytes"] <= memory_floor * slow["peak_bytes"], \
            f"{case.name}: {name} peak {fast['peak_bytes']} B vs {other} {slow['peak_bytes']} B"

def test_render_resolution_in_a_memory_budget(bench):
    budget = 16 * 2 ** 30
    ours = max_resolution([r for r in ROWS if r["contender"] == "omnifast"], budget)[0]
    ref = max_resolution([r for r in ROWS if r["contender"] == "reference"], budget)[0]
    if ours is None or ref is None:
        pytest.fail("the render cases did not run: nothing to fit in the budget")
    assert ours ** 2 >= 2 * ref ** 2, f"omnifast fits {ours}^2, the reference {ref}^2"
