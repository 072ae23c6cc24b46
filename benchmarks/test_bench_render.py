"""pytest-benchmark suite for one training render of the OmniAvatar renderer (cases shared with
`omnifast bench render`): both backends in the same run, time and peak memory, with the floors
of the render issue at 128^2 (EG3D's 48 + 48 samples): forward + backward at least 1.5x faster
than the reference backend with at most half its peak memory, and at least twice the pixels in
the same memory budget.

    python -m pytest benchmarks/test_bench_render.py --benchmark-json=out.json
"""
import pytest
import torch

import omnifast
from omnifast.bench.measure import return_large_blocks
from omnifast.bench.render import RenderBench, max_resolution, render_cases

DEVICE = "cuda" if torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"] else "cpu"
CASES = [c for c in render_cases(DEVICE) if (c.coarse, c.fine) == (48, 48)]
SPEED_FLOOR, MEMORY_FLOOR = 1.5, 0.5
ROWS = []


@pytest.fixture(scope="module")
def bench():
    return_large_blocks()
    return RenderBench(DEVICE)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_render_forward_backward(benchmark, bench, case):
    runs = 3 if DEVICE == "cuda" else 1
    got = {b: bench.measure(case, b, "forward+backward", runs) for b in ("omnifast", "reference")}
    ours, ref = got["omnifast"], got["reference"]
    for backend, m in got.items():
        ROWS.append({"backend": backend, "warp": "sdf", "resolution": case.resolution, "pass": "forward+backward",
                     "batch": case.batch, "samples_per_ray": [case.coarse, case.fine], **m})
    speedup = ref["ms"] / ours["ms"]
    benchmark.extra_info.update(device=DEVICE, case=case.name, speedup_vs_reference=speedup,
                                omnifast_ms=ours["ms"], reference_ms=ref["ms"], warp_share=ours["warp_share"],
                                omnifast_peak_bytes=ours["peak_bytes"], reference_peak_bytes=ref["peak_bytes"])
    benchmark.pedantic(bench.runner(case, "omnifast", "forward+backward"), rounds=1, warmup_rounds=0)
    if case.resolution == 128:
        assert speedup >= SPEED_FLOOR, f"{case.name}: {speedup:.2f}x < {SPEED_FLOOR}x"
        if ours["peak_bytes"] and ref["peak_bytes"]:
            assert ours["peak_bytes"] <= MEMORY_FLOOR * ref["peak_bytes"], \
                f"{case.name}: peak {ours['peak_bytes']} B vs reference {ref['peak_bytes']} B"


def test_render_resolution_in_a_memory_budget(bench):
    budget = 16 * 2 ** 30
    ours = max_resolution([r for r in ROWS if r["backend"] == "omnifast"], budget)[0]
    ref = max_resolution([r for r in ROWS if r["backend"] == "reference"], budget)[0]
    if ours is None or ref is None:
        pytest.fail("the render cases did not run: nothing to fit in the budget")
    assert ours ** 2 >= 2 * ref ** 2, f"omnifast fits {ours}^2, the reference {ref}^2"
