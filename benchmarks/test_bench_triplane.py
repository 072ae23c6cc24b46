"""pytest-benchmark suite for the tri-plane sampler; the cases are omnifast.bench's, shared with
`omnifast bench`. Each test times omnifast and the reference in the same run (interleaved),
records the ratio and peak memory, and checks the issue's floor for the EG3D cases.

    python -m pytest benchmarks/ --benchmark-json=out.json
"""
import pytest
import torch

import omnifast
from omnifast.bench import TRIPLANE_PASSES, measure_peak_bytes, time_calls, triplane_cases, triplane_runner

DEVICE = "cuda" if torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"] else "cpu"
# Minimum forward+backward speedups over the reference (EG3D planes; tri-grid cases are reported).
FLOORS = {("cpu", "forward+backward"): 2.0, ("cuda", "forward+backward"): 3.0}


def synced(fn):
    def run():
        fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    return run


@pytest.mark.parametrize("pass_name", TRIPLANE_PASSES)
@pytest.mark.parametrize("case", triplane_cases(DEVICE), ids=lambda c: c.name)
def test_triplane(benchmark, case, pass_name):
    ours = triplane_runner(case, "omnifast", pass_name, DEVICE)
    ref = triplane_runner(case, "reference", pass_name, DEVICE)
    t_ours, t_ref = time_calls([ours, ref], DEVICE, runs=9)
    speedup = t_ref.median_s / t_ours.median_s
    benchmark.extra_info.update(
        device=DEVICE, case=case.name, pass_name=pass_name, speedup_vs_reference=speedup,
        omnifast_ms=t_ours.median_s * 1e3, reference_ms=t_ref.median_s * 1e3,
        omnifast_peak_bytes=measure_peak_bytes(ours, DEVICE),
        reference_peak_bytes=measure_peak_bytes(ref, DEVICE))
    benchmark.pedantic(synced(ours), rounds=5, warmup_rounds=1)
    floor = FLOORS.get((DEVICE, pass_name))
    if floor is not None and case.depth == 0:
        assert speedup >= floor, f"{case.name} {pass_name}: {speedup:.2f}x < floor {floor}x"
