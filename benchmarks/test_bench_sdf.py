"""pytest-benchmark for a semantic-SDF training step on the device's preset (CPU: the small
network, 4 meshes x (1,024 + 2,048) points; CUDA: the full network, 16 x (4,096 + 8,192)),
split into its data step (FLAME, samples, exact ground truth) and the network step (forward,
double backward, Adam), with steps per second. The floor is the demo's: on 2 CPU cores enough
steps in 4 minutes (at least 1,500) to reach its accuracy.

    python -m pytest benchmarks/test_bench_sdf.py --benchmark-json=out.json
"""
import pytest
import torch

pytest.importorskip("smplx", reason="stage I needs smplx (pip install -e '.[demo]')")

from omnifast.bench import measure_peak_bytes, time_calls  # noqa: E402
from omnifast.flame import make_synthetic_flame  # noqa: E402
from omnifast.sdf.commands import PRESETS  # noqa: E402
from omnifast.sdf.losses import semantic_sdf_losses  # noqa: E402
from omnifast.sdf.network import NetworkConfig  # noqa: E402
from omnifast.sdf.train import Run, TrainConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_STEPS_IN_4_MINUTES = 1500


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame")
    make_synthetic_flame(str(folder))
    preset = dict(PRESETS[DEVICE])
    network = NetworkConfig.preset(preset.pop("network"))
    return Run(TrainConfig(flame_dir=str(folder), network=network, device=DEVICE, steps=10 ** 6, **preset))


def test_training_step(benchmark, run):
    batch = run.sampler.sample(run.config.batch, run.generator)

    def network_step():
        loss, _ = semantic_sdf_losses(run.model, batch, run.config.weights)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()

    data = lambda: run.sampler.sample(run.config.batch, run.generator)  # noqa: E731
    timings = time_calls([run.train_step, data, network_step], DEVICE, warmup=1, runs=5)
    step_s, data_s, network_s = (t.median_s for t in timings)
    benchmark.extra_info.update(
        device=DEVICE, network=f"{run.config.network.hidden} x {run.config.network.layers}",
        meshes=run.config.batch, points_per_mesh=run.config.surface_points + run.config.space_points,
        step_ms=step_s * 1e3, data_ms=data_s * 1e3, network_ms=network_s * 1e3,
        steps_per_s=1 / step_s, step_peak_bytes=measure_peak_bytes(run.train_step, DEVICE))
    benchmark.pedantic(run.train_step, rounds=3, warmup_rounds=1)
    if DEVICE == "cpu":
        assert 240 / step_s >= CPU_STEPS_IN_4_MINUTES, f"{1 / step_s:.1f} steps/s"


WARP_FLOOR_CPU = 1.1


def test_frozen_warp_evaluation(benchmark):
    """Stage II's frozen W on one render's samples (CPU: 64^2 rays x 48, the small network; CUDA:
    4 x 128^2 x 48, the full one), no gradients: the omnifast backend (omnifast.softplus in the
    MLP) against the reference backend (PyTorch's), taking turns, with peak memory. Floor on the
    CPU: 1.1x."""
    from omnifast.bench.render import untrained_warps

    cuda = DEVICE == "cuda"
    warp = untrained_warps(torch.device(DEVICE), "full" if cuda else "small")["sdf"]
    batch, rays = (4, 128 * 128) if cuda else (1, 64 * 64)
    generator = torch.Generator().manual_seed(0)
    points = ((torch.rand(batch, rays * 48, 3, generator=generator) - 0.5) * 0.9).to(DEVICE)
    params = torch.zeros(batch, warp.param_dim, device=DEVICE)

    def call(backend):
        with torch.no_grad():
            return warp(points, params, backend)

    ours, ref = (lambda: call("omnifast")), (lambda: call("reference"))
    for a, b in zip(ours(), ref()):  # the same answer to float32 rounding
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    t_ours, t_ref = (t.median_s for t in time_calls([ours, ref], DEVICE, warmup=1, runs=5))
    speedup = t_ref / t_ours
    benchmark.extra_info.update(device=DEVICE, points=points.shape[0] * points.shape[1], omnifast_ms=t_ours * 1e3,
                                reference_ms=t_ref * 1e3, speedup_vs_reference=speedup,
                                omnifast_peak_bytes=measure_peak_bytes(ours, DEVICE),
                                reference_peak_bytes=measure_peak_bytes(ref, DEVICE))
    benchmark.pedantic(ours, rounds=3, warmup_rounds=1)
    if not cuda:
        assert speedup >= WARP_FLOOR_CPU, f"{speedup:.2f}x < {WARP_FLOOR_CPU}x"
