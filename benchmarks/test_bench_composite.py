"""pytest-benchmark suite for the fused compositor (cases shared with `omnifast bench composite`):
omnifast, the MipRayMarcher2 reference and the peers present (nerfacc) timed alternately in the
same run, the ratios, peak memory, and the memory kept from forward to backward.

    python -m pytest benchmarks/ --benchmark-json=out.json
"""
import pytest
import torch

import omnifast
from omnifast.bench import (
    COMPOSITE_PASSES,
    composite_cases,
    composite_runner,
    measure_peak_bytes,
    measure_retained_bytes,
    time_calls,
)
from omnifast.bench.composite import composite_forward_with_graph, composite_peers

DEVICE = "cuda" if torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"] else "cpu"
SPEED_FLOORS = {("cpu", "forward+backward"): 4.0, ("cuda", "forward+backward"): 5.0}
PEERS, _ = composite_peers(DEVICE)


@pytest.mark.parametrize("pass_name", COMPOSITE_PASSES)
@pytest.mark.parametrize("case", composite_cases(DEVICE), ids=lambda c: c.name)
def test_composite(benchmark, case, pass_name):
    ours, ref, *peers = [composite_runner(case, impl, pass_name, DEVICE)
                         for impl in ("omnifast", "reference", *PEERS)]
    t_ours, t_ref, *t_peers = time_calls([ours, ref, *peers], DEVICE, runs=9)
    speedup = t_ref.median_s / t_ours.median_s
    kept = [measure_retained_bytes(composite_forward_with_graph(case, impl, DEVICE), DEVICE)
            for impl in ("omnifast", "reference")]
    benchmark.extra_info.update(
        device=DEVICE, case=case.name, pass_name=pass_name, speedup_vs_reference=speedup,
        omnifast_ms=t_ours.median_s * 1e3, reference_ms=t_ref.median_s * 1e3,
        omnifast_peak_bytes=measure_peak_bytes(ours, DEVICE),
        reference_peak_bytes=measure_peak_bytes(ref, DEVICE),
        omnifast_kept_for_backward=kept[0], reference_kept_for_backward=kept[1],
        **{f"{name}_ms": t.median_s * 1e3 for name, t in zip(PEERS, t_peers)})
    benchmark.pedantic(ours, rounds=5, warmup_rounds=1)
    if None not in kept:  # training memory: at most a quarter of the reference's
        assert kept[0] <= kept[1] / 4, f"kept {kept[0]} B vs reference {kept[1]} B"
    floor = SPEED_FLOORS.get((DEVICE, pass_name))
    assert floor is None or speedup >= floor, \
        f"{case.name} {pass_name}: {speedup:.2f}x < floor {floor}x"
