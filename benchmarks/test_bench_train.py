"""pytest-benchmark suite for one GAN training iteration of stage II (cases shared with
`omnifast bench train`): both renderer backends in the same run, EG3D's full-size networks at
512^2, seconds per amortised iteration and peak memory, with the floors of the training issue at a
neural rendering resolution of 128^2 (EG3D's 48 + 48 samples): at least 1.3x faster than the
reference backend with at most 0.6x its peak memory (on a GPU at batch 4: at least 1.3x faster).

    python -m pytest benchmarks/test_bench_train.py --benchmark-json=out.json
"""
import pytest
import torch

import omnifast
from omnifast.bench.measure import return_large_blocks
from omnifast.bench.render import OMNIFAST, Setup
from omnifast.bench.train import TrainBench, train_cases

DEVICE = "cuda" if torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"] else "cpu"
CASES = [c for c in train_cases(DEVICE) if c.nrr == 128 and not c.sr_free]
SPEED_FLOOR, MEMORY_FLOOR = 1.3, 0.6


@pytest.fixture(scope="module")
def bench():
    return_large_blocks()
    return TrainBench(DEVICE)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_train_iteration(benchmark, bench, case):
    cuda = DEVICE == "cuda"
    bench.warm_up(case)
    # three iterations each, taking turns, so that a slower spell of the machine falls on both
    got = {s.name: row for s, row in bench.measure(case, (OMNIFAST, Setup("reference")), runs=3,
                                                  warmup=1 if cuda else 0, shares=False).items()}
    ours, ref = got["omnifast"], got["reference"]
    speedup = ref["seconds_per_iteration"] / ours["seconds_per_iteration"]
    benchmark.extra_info.update(device=DEVICE, case=case.name, speedup_vs_reference=speedup,
                                **{f"{b}_{k}": got[b][k] for b in got for k in
                                   ("seconds_per_iteration", "kimg_per_day", "peak_bytes", "phases",
                                    "phase_peak_bytes", "iterations_seconds")})
    run = bench.make_run(case, OMNIFAST)
    run.step = 1  # a plain iteration, the one pytest-benchmark times
    benchmark.pedantic(run.train_step, rounds=1, warmup_rounds=0)
    del run
    assert speedup >= SPEED_FLOOR, f"{case.name}: {speedup:.2f}x < {SPEED_FLOOR}x"
    if not cuda and ours["peak_bytes"] and ref["peak_bytes"]:
        assert ours["peak_bytes"] <= MEMORY_FLOOR * ref["peak_bytes"], \
            f"{case.name}: peak {ours['peak_bytes']} B vs reference {ref['peak_bytes']} B"
