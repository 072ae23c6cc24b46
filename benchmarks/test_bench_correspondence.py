"""pytest-benchmark suite for closest-point queries (cases shared with `omnifast bench
correspondence`): omnifast with its tree build against brute force and the peers installed
(trimesh, Open3D, Warp), timed in turn in the same run, with the issue's floors.

    python -m pytest benchmarks/test_bench_correspondence.py --benchmark-json=out.json
"""
import pytest
import torch

import omnifast
from omnifast.bench import measure_peak_bytes, time_calls
from omnifast.bench.correspondence import correspondence_cases, correspondence_contenders

DEVICE = "cuda" if torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"] else "cpu"
# How much faster omnifast must be than each peer (a ratio of times; < 1 allows it to be slower).
FLOORS = {"cpu": {"trimesh": 30.0, "warp (cpu)": 1.0, "open3d (Embree)": 1 / 1.5},
          "cuda": {"warp (cuda)": 1.0}}
CUDA_QUERIES_PER_S = 1e8  # B = 8 FLAME-size meshes, tree build included


@pytest.mark.parametrize("case", correspondence_cases(DEVICE), ids=lambda c: c.name)
def test_closest_point(benchmark, case):
    contenders, missing = correspondence_contenders(case, DEVICE)
    timings = time_calls([c.run for c in contenders], DEVICE, runs=3, max_seconds=120)
    ms = {c.name: t.median_s * 1e3 * c.scale for c, t in zip(contenders, timings)}
    ours = ms["omnifast"]
    benchmark.extra_info.update(
        device=DEVICE, case=case.name, ms=ms, not_measured=missing,
        scaled_from_subset=[c.name for c in contenders if c.scale != 1.0],
        omnifast_peak_bytes=measure_peak_bytes(contenders[0].run, DEVICE),
        omnifast_queries_per_s=case.points / (ours / 1e3))
    benchmark.pedantic(contenders[0].run, rounds=3, warmup_rounds=1)
    for peer, floor in FLOORS[DEVICE].items():
        if peer in ms:
            assert ms[peer] / ours >= floor, f"{peer}: omnifast {ours:.1f} ms vs {ms[peer]:.1f} ms"
    if DEVICE == "cuda" and case.batch == 8:
        assert case.points / (ours / 1e3) >= CUDA_QUERIES_PER_S
