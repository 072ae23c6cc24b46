"""Stage II training: one step of every phase moves what should move (and never the warp), the
two renderer backends give the same generator in float64, resume is exact, two processes under
DistributedDataParallel make the single-process update, a short tiny run, and clear errors."""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from omnifast.data import make_dataset
from omnifast.gan.models import Generator, GeneratorConfig
from omnifast.gan.train import TINY_GENERATOR, GANConfig, GANRun, train_gan
from omnifast.geometry import camera_labels, ffhq_intrinsics, orbit_cam2world
from omnifast.render import RenderConfig, load_warp
from omnifast.runs import RunError, RunFolder
from omnifast.sdf.network import NetworkConfig
from omnifast.sdf.train import TrainConfig, train

TINY_SDF = NetworkConfig(hidden=16, layers=2, skip=0, frequencies=2, condition=8)
FAST = dict(nrr_initial=16, render=dict(depth_resolution=6, depth_resolution_importance=6), batch=2,
            image_every=1000, checkpoint_every=1000)


@pytest.fixture(scope="module")
def stage_one(flame_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    config = TrainConfig(flame_dir=flame_dir, n_shape=10, n_expr=10, steps=2, batch=1, surface_points=32,
                         space_points=32, network=TINY_SDF, eval_every=2, checkpoint_every=2, eval_meshes=1,
                         eval_points=32)
    train(config, str(root / "sdf"), progress=False, log=lambda *a: None)
    make_dataset(str(root / "data"), flame_dir, count=8, resolution=32, n_shape=10, n_expr=10, batch=8,
                 progress=False, log=lambda *a: None)
    return root


def config_for(root, **changes):
    return GANConfig.with_preset("tiny", **{"dataset": str(root / "data"), "sdf_run": str(root / "sdf"), **FAST,
                                            **changes})


def test_one_step_of_every_phase_moves_every_trainable_parameter(stage_one):
    run = GANRun(config_for(stage_one, r1_interval=1, density_reg_interval=1))
    before = {name: p.detach().clone() for name, p in [*run.G.named_parameters(), *run.D.named_parameters(),
                                                        *(("warp." + n, p) for n, p in run.G.renderer.warp.named_parameters())]}
    terms = run.train_step()
    assert {"G", "D", "r1", "density_reg", "geometry_prior", "control", "D_control"} <= set(terms)
    assert all(math.isfinite(v) for v in terms.values())
    still = [n for n, p in run.G.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    still += [n for n, p in run.D.named_parameters() if torch.equal(p, before[n])]
    assert not still, f"parameters that did not move: {still}"
    for name, p in run.G.renderer.warp.named_parameters():
        assert not p.requires_grad and torch.equal(p, before["warp." + name]), name
    # G_ema moved towards G
    assert any(not torch.equal(a, b) for a, b in zip(run.G_ema.parameters(), before.values()))


def test_backends_give_the_same_generator_in_float64(stage_one):
    warp = load_warp(str(stage_one / "sdf"))
    G = Generator(GeneratorConfig(**TINY_GENERATOR), warp, RenderConfig(depth_resolution=6, depth_resolution_importance=4,
                                                                       chunk=50), 8, 16).double()
    z = torch.randn(2, G.config.z_dim, dtype=torch.float64)
    cam = orbit_cam2world(math.pi / 2, math.pi / 2, yaw_std=0.2, batch=2, dtype=torch.float64)
    c = torch.cat([camera_labels(cam, ffhq_intrinsics(dtype=torch.float64)),
                   torch.randn(2, warp.param_dim, dtype=torch.float64) * 0.3], -1)
    results = []
    for backend in ("omnifast", "reference"):
        out = G(z, c, backend=backend, noise_mode="const", generator=torch.Generator().manual_seed(1))
        loss = out["image"].square().mean() + out["image_raw"].mean() + out["delta"].square().mean()
        grads = torch.autograd.grad(loss, [p for p in G.parameters() if p.requires_grad], allow_unused=True)
        results.append((out, grads))
    (a, ga), (b, gb) = results
    for key in ("image", "image_raw", "image_depth", "opacity", "delta"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-9, msg=key)
    assert sum(g is not None for g in ga) > 20  # noise strengths are unused without noise
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-9)


def test_resume_continues_exactly(stage_one, tmp_path):
    config = config_for(stage_one, steps=4, checkpoint_every=2)
    train_gan(config, str(tmp_path / "straight"), progress=False)
    train_gan(config, str(tmp_path / "resumed"), progress=False, stop_after=2)
    train_gan(None, str(tmp_path / "resumed"), resume=True, progress=False)
    a = RunFolder(str(tmp_path / "straight")).load_checkpoint()
    b = RunFolder(str(tmp_path / "resumed")).load_checkpoint()
    assert a["step"] == b["step"] == 4
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"


def _ddp_worker(rank, world_size, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        run = GANRun(GANConfig.from_dict(root), rank, world_size)
        run.train_step()
        if rank == 0:
            torch.save({key: {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
                        for key, module in (("G", run.G), ("D", run.D))}, out)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_make_the_single_process_update(stage_one, tmp_path):
    # Deterministic depths and minibatch-std groups that match the processes' shares, so the only
    # difference could be the gradient exchange; G's step is kept tiny because Adam's first step is
    # lr * sign(gradient), which would amplify rounding in near-zero gradients into the fakes D sees.
    settings = config_for(stage_one, batch=2, mbstd_group=2, r1_interval=1, density_reg_interval=1, lr_g=1e-12,
                          render=dict(depth_resolution=6, depth_resolution_importance=6, det_sampling=True)).to_dict()
    single = GANRun(GANConfig.from_dict({**settings, "batch": 4}))
    single.train_step()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, settings, out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    # The exchanged gradients (what the optimiser steps with) equal the combined batch's.
    for key, module in (("G", single.G), ("D", single.D)):
        for name, p in module.named_parameters():
            if p.grad is None or "noise_strength" in name:  # its gradient is each process's own noise
                continue
            scale = float(p.grad.abs().max()) + 1e-12
            torch.testing.assert_close(ddp[key][name], p.grad, rtol=1e-3, atol=1e-4 * scale, msg=f"{key}.{name}")


def test_a_tiny_run_trains_and_logs(stage_one, tmp_path):
    terms = train_gan(config_for(stage_one, steps=50, image_every=25, checkpoint_every=25), str(tmp_path / "run"),
                      progress=False)
    assert all(math.isfinite(v) for v in terms.values())
    files = os.listdir(tmp_path / "run")
    assert {"config.json", "checkpoint.pt", "train_log.csv", "images"} <= set(files)
    assert sorted(os.listdir(tmp_path / "run" / "images")) == ["step000025.png", "step000050.png"]
    assert len(open(tmp_path / "run" / "train_log.csv").read().splitlines()) == 51
    assert os.listdir(tmp_path / "run" / "tensorboard")


def test_bad_runs_raise_clear_errors(stage_one, flame_dir, tmp_path):
    make_dataset(str(tmp_path / "other"), flame_dir, count=2, resolution=32, n_shape=10, n_expr=5,
                 progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="FLAME layout is .*n_expr': 5.*the model's is .*n_expr': 10"):
        GANRun(config_for(stage_one, dataset=str(tmp_path / "other")))
    with pytest.raises(RunError, match="unknown setting 'learning_rate'"):
        config_for(stage_one, learning_rate=1)
    with pytest.raises(RunError, match="preset must be one of"):
        GANConfig.with_preset("huge", dataset="x", sdf_run="y")
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        GANRun(config_for(stage_one, dataset=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="labels must be"):
        GANRun(config_for(stage_one)).G(torch.randn(1, 64), torch.zeros(1, 30))


def test_train_gan_command(stage_one, tmp_path):
    import json
    import subprocess
    import sys

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(FAST))
    run = lambda *a: subprocess.run([sys.executable, "-m", "omnifast", "train-gan", *a],  # noqa: E731
                                    capture_output=True, text=True)
    out = str(tmp_path / "run")
    first = run("--data", str(stage_one / "data"), "--sdf-run", str(stage_one / "sdf"), "--out", out,
                "--config", str(settings), "--steps", "1", "--no-progress", "--device", "cpu")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1])["nrr"] == 16
    again = run("--out", out, "--resume", "--steps", "2", "--no-progress", "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert RunFolder(out).load_checkpoint()["step"] == 2
    missing = run("--out", str(tmp_path / "new"), "--data", str(stage_one / "data"), "--no-progress")
    assert missing.returncode == 2 and "needs --data and --sdf-run" in missing.stderr
    changed = run("--out", out, "--resume", "--data", str(stage_one / "data"), "--sdf-run", str(stage_one / "sdf"),
                  "--config", str(settings), "--lr-g", "0.1", "--no-progress", "--device", "cpu")
    assert changed.returncode == 2 and "lr_g" in changed.stderr
