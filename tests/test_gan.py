"""Stage II training: one step of every phase moves what should move (and never the warp), the
two renderer backends give the same generator in float64, resume is exact, two processes under
DistributedDataParallel make the single-process update, a short tiny run, and clear errors."""
import math
import os
import socket

import numpy as np
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
    run = GANRun(config_for(stage_one, r1_interval=1, density_reg_interval=1, eikonal=0.1))
    before = {name: p.detach().clone() for name, p in [*run.G.named_parameters(), *run.D.named_parameters(),
                                                        *(("warp." + n, p) for n, p in run.G.renderer.warp.named_parameters())]}
    terms = run.train_step()
    assert {"G", "D", "r1", "density_reg", "eikonal", "geometry_prior", "control", "D_control"} <= set(terms)
    assert not run.D.autocast and not run.G.superresolution.autocast  # bfloat16 on CUDA only
    assert all(math.isfinite(v) for v in terms.values())
    still = [n for n, p in run.G.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    still += [n for n, p in run.D.named_parameters() if torch.equal(p, before[n])]
    # EG3D's super-resolution runs without noise (superresolution_noise_mode 'none'): its noise
    # strengths are the only parameters no loss reaches.
    unused = [n for n in still if n.startswith("superresolution.") and n.endswith("noise_strength")]
    assert unused and not set(still) - set(unused), f"parameters that did not move: {still}"
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


def test_mixed_precision_runs_super_resolution_and_d_in_bfloat16(stage_one):
    # CUDA autocast in training; the CPU's bfloat16 autocast checks the same code path here. Without
    # the tiny preset's background network, whose untrained colours (up to 11 in the image) would
    # scale bfloat16's relative error past the absolute tolerance below.
    run = GANRun(config_for(stage_one, generator=TINY_GENERATOR))
    z = torch.randn(2, run.G.config.z_dim)
    c = run.dataset.labels[:2]
    image, raw = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    outputs = {}
    for autocast in (False, True):
        run.G.superresolution.autocast = run.D.autocast = autocast
        torch.manual_seed(0)
        out = run.G(z, c, noise_mode="const", generator=torch.Generator().manual_seed(1))
        logits, regressed = run.D(image.requires_grad_(True), raw, c)
        grads = torch.autograd.grad(logits.sum() + regressed.sum(), [image, *run.D.parameters()])
        outputs[autocast] = out["image"], logits, regressed, grads
    (i32, l32, r32, g32), (i16, l16, r16, g16) = outputs[False], outputs[True]
    assert i16.dtype == l16.dtype == r16.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g16)
    assert not torch.equal(i16, i32) and not torch.equal(l16, l32)  # it did run in another precision
    torch.testing.assert_close(i16, i32, rtol=0, atol=0.05)
    torch.testing.assert_close(l16, l32, rtol=0.05, atol=0.05)
    torch.testing.assert_close(r16, r32, rtol=0.05, atol=0.05)
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in g16)
    assert torch.nn.functional.cosine_similarity(g16[0].flatten(), g32[0].flatten(), dim=0) > 0.99  # R1's input


def test_recomputing_the_full_resolution_blocks_gives_the_same_gradients(stage_one):
    # G main, D main and R1 (a double backward) with the super-resolution's last block and D's
    # first block recomputed in the backward: the same losses and gradients as keeping them.
    from omnifast.gan import loss as L
    run = GANRun(config_for(stage_one, recompute_full_resolution=False))
    run.G.double(), run.D.double()
    z = torch.randn(2, run.G.config.z_dim, dtype=torch.float64)
    c = run.dataset.labels[:2].double()
    real = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1
    params = [p for p in (*run.G.parameters(), *run.D.parameters()) if p.requires_grad]
    results, calls = {}, []
    for block in (run.G.superresolution.block1, getattr(run.D, f"b{run.D.resolution}")):
        block.forward = lambda *args, forward=block.forward: calls.append(forward) or forward(*args)
    for recompute in (False, True):
        calls.clear()
        run.G.superresolution.recompute = run.D.recompute = recompute
        torch.manual_seed(0)  # the noise inputs (their strengths' gradients) alike in both
        out = run.G(z, c, noise_mode="random", generator=torch.Generator().manual_seed(1))
        logits, regressed = L.run_discriminator(run.D, out["image"], out["image_raw"], c, 0.0)
        loss = L.generator_loss(logits) + regressed.square().mean()
        loss = loss + L.r1_penalty(run.D, real, L.resize(real, 16), c, 0.0).mean()
        results[recompute] = loss, torch.autograd.grad(loss, params, allow_unused=True)
        # SR once, D twice (G's image, R1); recomputed, each again in the backward (R1's D twice more)
        assert len(calls) == (7 if recompute else 3)
    (kept, kept_grads), (again, again_grads) = results[False], results[True]
    torch.testing.assert_close(again, kept, rtol=1e-12, atol=0)
    assert sum(g is not None and g.abs().max() > 0 for g in kept_grads) > 40
    for a, b in zip(again_grads, kept_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_resume_continues_exactly(stage_one, tmp_path):
    config = config_for(stage_one, steps=4, checkpoint_every=2)
    train_gan(config, str(tmp_path / "straight"), progress=False)
    assert_resume_is_exact(config, tmp_path, stop_after=2)


def assert_resume_is_exact(config, tmp_path, stop_after):
    """A run stopped after ``stop_after`` iterations and resumed ends with the weights of the run
    in ``tmp_path / "straight"``, which ran ``config.steps`` straight."""
    train_gan(config, str(tmp_path / "resumed"), progress=False, stop_after=stop_after)
    train_gan(None, str(tmp_path / "resumed"), resume=True, progress=False)
    a = RunFolder(str(tmp_path / "straight")).load_checkpoint()
    b = RunFolder(str(tmp_path / "resumed")).load_checkpoint()
    assert a["step"] == b["step"] == config.steps
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"


def test_the_sr_free_tiny_preset_trains_and_resumes_exactly(stage_one, tmp_path):
    # No super-resolution: the image is the proposal-sampled render at the dataset's 32^2, and
    # D's raw input is that same image; every phase runs (R1 and the regulariser every 2 steps).
    config = GANConfig.with_preset("sr-free-tiny", dataset=str(stage_one / "data"), sdf_run=str(stage_one / "sdf"),
                                   steps=4, checkpoint_every=2, image_every=2, r1_interval=2, density_reg_interval=2)
    run = GANRun(config)
    assert run.G.superresolution is None and run.G.renderer.config.sampling == "proposal"
    z, c, _ = run.fake_inputs(torch.Generator().manual_seed(0))
    out = run.G(z, c)
    assert out["image"] is out["image_raw"] and out["image"].shape == (2, 3, 32, 32)
    terms = train_gan(config, str(tmp_path / "straight"), progress=False)
    assert all(math.isfinite(v) for v in terms.values())
    rows = open(tmp_path / "straight" / "train_log.csv").read().splitlines()
    header, step2 = rows[0].split(","), rows[4].split(",")  # the header, the start, iterations 1, 2, 3, ...
    for name in ("G", "D", "r1", "density_reg"):
        assert math.isfinite(float(step2[header.index(name)])), name
    assert sorted(os.listdir(tmp_path / "straight" / "images")) == ["step000000.png", "step000002.png",
                                                                   "step000004.png"]
    assert_resume_is_exact(config, tmp_path, stop_after=2)
    with pytest.raises(RunError, match="nrr_initial is 16, but a generator without super-resolution renders the "
                                       "dataset's images at their own resolution: nrr_initial must be 32"):
        GANRun(GANConfig.with_preset("sr-free-tiny", dataset=str(stage_one / "data"), sdf_run=str(stage_one / "sdf"),
                                     nrr_initial=16))


def test_bench_quality_on_a_run_and_its_hair_shell(stage_one, tmp_path):
    import omnifast
    from omnifast.bench.quality import coordinate_channels, proposal_quality, sampled_points

    planes = torch.zeros(1, 3, 2, 3, 16, 16, dtype=torch.float64)
    points = (torch.rand(1, 200, 3, dtype=torch.float64) - 0.5) * 0.9
    sampled = omnifast.triplane_sample(coordinate_channels(planes, 1.0), points, reduce="mean")
    torch.testing.assert_close(sampled_points(sampled), points, rtol=0, atol=1e-12)
    train_gan(config_for(stage_one, steps=1), str(tmp_path / "run"), progress=False)
    rows = proposal_quality(str(tmp_path / "run"), cameras=2, resolution=16, batch=1, log=lambda *a: None,
                            image_path=str(tmp_path / "quality.png"))
    assert [r["generator"] for r in rows] == ["trained", "hair shell"]
    for row in rows:
        assert math.isfinite(row["psnr_db"]) and row["depth_mae_mm"] >= 0 and 0 < row["silhouette_iou"] <= 1
        assert row["worst_camera"]["psnr_db"] <= row["psnr_db"] + 1e-9
    assert rows[1]["coverage"] > rows[0]["coverage"]  # the shell adds to the silhouette
    assert os.path.getsize(tmp_path / "quality.png") > 0


def test_a_non_finite_loss_is_reported_before_anything_is_written(stage_one, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    config = config_for(stage_one, steps=3, checkpoint_every=1, log_every=1, image_every=1)
    real_step = GANRun.train_step

    def step(run):
        terms = real_step(run)
        return {**terms, "r1": float("nan")} if run.step == 2 else terms

    monkeypatch.setattr(GANRun, "train_step", step)
    with pytest.raises(RunError, match="'r1' is nan at step 2.*the checkpoint of step 1 is kept"):
        train_gan(config, out, progress=False)
    assert RunFolder(out).load_checkpoint()["step"] == 1
    rows = open(os.path.join(out, "train_log.csv")).read().splitlines()
    assert len(rows) == 3 and "nan" not in rows[-1]  # the header, the start and step 1
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["step000000.png", "step000001.png"]


STEPS_EVERY_PHASE = 3  # r1_interval and density_reg_interval 2: steps 0 and 2 regularise, step 1 does not


def _grads(run):
    return {key: {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
            for key, module in (("G", run.G), ("D", run.D))}


def _ddp_worker(rank, world_size, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        run = GANRun(GANConfig.from_dict(root), rank, world_size)
        steps = []
        for _ in range(STEPS_EVERY_PHASE):
            run.train_step()
            steps.append(_grads(run))
        if rank == 0:
            torch.save({"steps": steps, "w_avg": run.G.backbone.mapping.w_avg}, out)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_make_the_single_process_update(stage_one, tmp_path):
    # Deterministic depths and minibatch-std groups that match the processes' shares, so the only
    # difference could be the gradient exchange; the steps are kept tiny because Adam's first step is
    # lr * sign(gradient), which would amplify rounding in near-zero gradients into later steps.
    settings = config_for(stage_one, batch=2, mbstd_group=2, r1_interval=2, density_reg_interval=2, lr_g=1e-12,
                          lr_d=1e-12, render=dict(depth_resolution=6, depth_resolution_importance=6,
                                                  det_sampling=True)).to_dict()
    single = GANRun(GANConfig.from_dict({**settings, "batch": 4}))
    single_steps = []
    for _ in range(STEPS_EVERY_PHASE):
        single.train_step()
        single_steps.append(_grads(single))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, settings, out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    # At every step, regularised or not, the exchanged gradients (what the optimiser steps with)
    # equal the combined batch's, and so does the tracked mean w.
    for step, (ours, theirs) in enumerate(zip(ddp["steps"], single_steps)):
        for key in ("G", "D"):
            assert set(ours[key]) == set(theirs[key]), (step, key)
            # Compared by norm: the L1 density regulariser's sign may flip at a point whose two
            # SDF corrections agree to rounding (a few elements: up to 0.3% of the regularised
            # step's decoder gradient, 0.03% without the regulariser), and a gradient that is zero but
            # for rounding (the decoder's bias there) is compared at the module's scale.
            module_norm = sum(grad.square().sum() for grad in theirs[key].values()).sqrt()
            for name, grad in theirs[key].items():
                if "noise_strength" in name:  # its gradient is each process's own noise
                    continue
                error = (ours[key][name] - grad).norm()
                assert error <= 3e-3 * grad.norm() + 1e-5 * module_norm, (step, key, name, float(error),
                                                                           float(grad.norm()))
    torch.testing.assert_close(ddp["w_avg"], single.G.backbone.mapping.w_avg, rtol=1e-5, atol=1e-6)


def _torchrun(*args):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "omnifast", "train-gan", "--no-progress", "--device", "cpu", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_trains_every_phase_with_grids_and_resumes_exactly(stage_one, tmp_path):
    # Through the real command: R1 and the density regulariser every 2 steps, image grids and
    # checkpoints every 2; a run stopped at step 3 and resumed to 5 equals one that ran 5 straight.
    settings = config_for(stage_one, r1_interval=2, density_reg_interval=2, image_every=2, checkpoint_every=2).to_dict()
    config = tmp_path / "config.json"
    config.write_text(__import__("json").dumps({k: settings[k] for k in ("dataset", "sdf_run", "nrr_initial", "render",
                                                                          "batch", "r1_interval",
                                                                          "density_reg_interval")}))
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    _torchrun("--config", str(config), "--out", straight, "--steps", "5", "--image-every", "2")
    _torchrun("--config", str(config), "--out", resumed, "--steps", "3", "--image-every", "2")
    _torchrun("--out", resumed, "--resume", "--steps", "5")
    a, b = RunFolder(straight).load_checkpoint(), RunFolder(resumed).load_checkpoint()
    assert a["step"] == b["step"] == 5 and a["config"]["batch"] == 2
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert sorted(os.listdir(os.path.join(straight, "images"))) == ["step000000.png", "step000002.png", "step000004.png",
                                                                    "step000005.png"]
    rows = open(os.path.join(straight, "train_log.csv")).read().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 7 and all(row.split(",")[header.index("r1")] for row in rows[2::2])  # steps 1, 3, 5 ran R1


def test_a_tiny_run_trains_and_logs(stage_one, tmp_path):
    terms = train_gan(config_for(stage_one, steps=50, image_every=25, checkpoint_every=25), str(tmp_path / "run"),
                      progress=False)
    assert all(math.isfinite(v) for v in terms.values())
    files = os.listdir(tmp_path / "run")
    assert {"config.json", "checkpoint.pt", "train_log.csv", "images"} <= set(files)
    assert sorted(os.listdir(tmp_path / "run" / "images")) == ["step000000.png", "step000025.png", "step000050.png"]
    rows = open(tmp_path / "run" / "train_log.csv").read().splitlines()
    assert len(rows) == 52 and rows[1].startswith("0,")  # the header, the start, 50 iterations
    assert os.listdir(tmp_path / "run" / "tensorboard")


def test_bad_runs_raise_clear_errors(stage_one, flame_dir, tmp_path):
    make_dataset(str(tmp_path / "other"), flame_dir, count=2, resolution=32, n_shape=10, n_expr=5,
                 progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="FLAME layout is .*n_expr': 5.*the model's is .*n_expr': 10"):
        GANRun(config_for(stage_one, dataset=str(tmp_path / "other")))
    with pytest.raises(RunError, match="unknown setting 'learning_rate'"):
        config_for(stage_one, learning_rate=1)
    with pytest.raises(RunError, match="eikonal needs warp 'sdf'.*got warp 'mesh'"):
        config_for(stage_one, eikonal=0.1, warp="mesh")
    with pytest.raises(RunError, match="eikonal needs render density 'sdf'"):
        config_for(stage_one, eikonal=0.1, render=dict(density="density_delta"))
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
    # a bad value is named with the file it came from, before anything is written
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"generator": {"grid_resolution": 96}}))
    refused = run("--out", str(tmp_path / "refused"), "--data", str(stage_one / "data"), "--sdf-run",
                  str(stage_one / "sdf"), "--config", str(bad), "--no-progress", "--device", "cpu")
    assert refused.returncode == 2 and (f"settings ({bad}, the command line): GeneratorConfig: grid_resolution must "
                                        "be a power of two >= 4, got 96") in refused.stderr, refused.stderr
    assert not (tmp_path / "refused").exists()


def test_resume_honours_the_operational_settings_it_is_given(stage_one, tmp_path):
    out = str(tmp_path / "run")
    train_gan(config_for(stage_one, steps=1), out, progress=False)
    train_gan(config_for(stage_one, steps=3, image_every=1, checkpoint_every=1), out, resume=True, progress=False)
    assert sorted(os.listdir(tmp_path / "run" / "images")) == ["step000000.png", "step000001.png", "step000002.png",
                                                               "step000003.png"]
    assert RunFolder(out).read_config()["image_every"] == 1


def test_train_gan_command_resumes_with_the_command_lines_device_and_schedules(tmp_path, monkeypatch):
    import omnifast.gan.train as train_module
    from omnifast.cli import main

    out = str(tmp_path / "run")
    RunFolder(out, create=True).write_config(config_for(tmp_path, steps=5, device="cuda:0").to_dict())
    seen = []
    monkeypatch.setattr(train_module, "train_gan", lambda config, run_dir, **options: seen.append((config, options)) or {})
    assert main(["train-gan", "--out", out, "--resume", "--device", "cpu", "--image-every", "3",
                 "--checkpoint-every", "4", "--steps", "7", "--no-progress"]) == 0
    config, options = seen[-1]
    assert (config.device, config.image_every, config.checkpoint_every, config.steps) == ("cpu", 3, 4, 7)
    assert options == dict(resume=True, steps=7, progress=False)
    assert {k: v for k, v in config.to_dict().items() if k in train_module.RUN_DEFINING} == \
        {k: v for k, v in config_for(tmp_path).to_dict().items() if k in train_module.RUN_DEFINING}
    assert main(["train-gan", "--out", out, "--resume"]) == 0  # no --device: as for a new run
    assert seen[-1][0].device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert seen[-1][1]["progress"]


def test_torchrun_ranks_take_their_own_gpu_and_nccl(tmp_path, monkeypatch):
    import omnifast.gan.train as train_module

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    mine = torch.device("cuda", 1)
    for given in ("cuda", "cuda:0"):  # cuda:0: a resumed run's saved device (its rank 0's)
        calls.clear()
        assert train_module.setup_distributed(given) == (3, 4, mine)
        assert calls == [("set_device", mine), ("init", "nccl")]
    calls.clear()
    assert train_module.setup_distributed("cpu") == (3, 4, torch.device("cpu")) and calls == [("init", "gloo")]

    # train_gan: the device is set and the group made before anything is built.
    class Built(Exception):
        pass

    def built(config, rank, world_size):
        calls.append(("run", config.device, rank, world_size))
        raise Built

    monkeypatch.setattr(train_module, "GANRun", built)
    calls.clear()
    with pytest.raises(Built):
        train_gan(config_for(tmp_path, device="cuda"), str(tmp_path / "run"), progress=False)
    assert calls == [("set_device", mine), ("init", "nccl"), ("run", "cuda:1", 3, 4)]

    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(RunError, match="LOCAL_RANK is not set"):
        train_module.setup_distributed("cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    calls.clear()
    assert train_module.setup_distributed("cuda") == (0, 1, torch.device("cuda")) and calls == []


# ---- generation


@pytest.fixture(scope="module")
def gan_run(stage_one):
    # The exact FLAME prior as the warp: the 2-step stage I network of these tests is no head yet.
    train_gan(config_for(stage_one, steps=2, warp="mesh"), str(stage_one / "gan"), progress=False)
    return stage_one / "gan"


def test_generate_command_writes_grids_a_sweep_video_and_meshes(gan_run, tmp_path):
    import json
    import subprocess
    import sys

    import imageio.v2 as imageio
    from PIL import Image

    from omnifast.sdf.export import read_ply

    out = tmp_path / "grid.png"
    result = subprocess.run([sys.executable, "-m", "omnifast", "generate", str(gan_run), "--seeds", "0-1",
                             "--out", str(out), "--sweep", "jaw", "--frames", "3", "--video",
                             str(tmp_path / "jaw.gif"), "--params", "expression=0.5", "--mesh",
                             str(tmp_path / "head.ply"), "--mesh-resolution", "32", "--extras", "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seeds"] == [0, 1] and report["settings"] == 3 and report["step"] == 2
    for name in ("grid.png", "grid_raw.png", "grid_depth.png", "grid_normals.png"):
        assert Image.open(tmp_path / name).size == (3 * 32, 2 * 32), name  # a column per frame, a row per seed
    frames = imageio.mimread(tmp_path / "jaw.gif")
    assert len(frames) == 3 and frames[0].shape[:2] == (32, 2 * 32)  # the seeds side by side
    assert not np.array_equal(frames[0], frames[-1])  # the jaw moved something
    for name in ("head.ply", "head_canonical.ply"):
        verts, faces = read_ply(tmp_path / name)
        assert len(faces) > 100 and verts.abs().max() < 0.5  # a head, in FLAME's metres
    # a sweep over the camera keeps the mapping's input: the same identity from every side
    from omnifast.gan.generate import HeadGenerator

    generator = HeadGenerator(str(gan_run))
    params, yaws = generator.sweep_params("yaw", torch.zeros(1, generator.layout.size), 3)
    assert torch.equal(params[0], params[2]) and yaws[0] < 0 < yaws[2]
    labels = torch.cat([generator.labels(params[i:i + 1], float(yaws[i])) for i in range(3)])
    got = generator.synthesize([5, 5, 5], labels)
    assert got["image"].shape == (3, 3, 32, 32) and got["normals"].shape == (3, 3, 16, 16)
    assert torch.allclose(got["normals"].norm(dim=1), torch.ones(1), atol=1e-4)


def test_generate_rejects_bad_arguments(gan_run, tmp_path):
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "omnifast", "generate", str(gan_run), "--out",  # noqa: E731
                                     str(tmp_path / "g.png"), *a], capture_output=True, text=True)
    for args, message in ((["--seeds", "a-b"], "--seeds: expected numbers"),
                          (["--video", "v.mp4"], "--video needs --sweep"),
                          (["--sweep", "jaw", "--video", "v.avi"], "--video must end in .mp4 or .gif"),
                          (["--params", "smile=1"], "--params: expected NAME=v1,v2")):
        result = run(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_eval_gan_measures_geometry_and_control_against_flame(gan_run, tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "omnifast", "eval-gan", str(gan_run), "--samples", "2",
                             "--mesh-resolution", "48", "--json", str(path), "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(path.read_text())
    assert report["samples"] == 2 and report["geometry"]["face_pixels"] > 20
    for group, names in (("geometry", ("depth_mm", "surface_mm")),
                         ("control", ("expression_mm", "jaw_mm", "identity_pixel_change"))):
        for name in names:
            assert all(math.isfinite(v) and v >= 0 for v in report[group][name].values()), (group, name)
    # The run's warp is the exact FLAME prior and its correction starts at zero: two iterations
    # later the generated surface still lies near the FLAME mesh, in the right frame and units
    # (Adam's first steps move each weight by about the learning rate whatever its gradient: the
    # 95th percentile is 0.7-8 mm across seeds without the tiny preset's background network, 11 mm
    # with it, a shift of the whole surface; a wrong frame or unit is off by many centimetres).
    surface = report["geometry"]["surface_mm"]
    assert surface["p95"] < 15 and surface["p95"] - surface["mean"] < 5
    assert report["geometry"]["depth_mm"]["mean"] < 30


# ---- image quality


class _TinyDetector(torch.nn.Module):
    """Stands in for the Inception network with random weights: a detector's signature
    (uint8 images, ``return_features``)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.float() / 255, size=(32, 32), mode="bilinear")
        return self.conv(x).relu().mean((2, 3)) if return_features else self.conv(x).sum((1, 2, 3))


def test_frechet_distance_and_kid_match_their_definitions():
    from scipy import linalg

    from omnifast.gan.metrics import frechet_distance, kernel_inception_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=g, dtype=torch.float64)
    b = torch.randn(200, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64) + 0.5
    mu_a, mu_b, s_a, s_b = a.mean(0).numpy(), b.mean(0).numpy(), np.cov(a.numpy().T), np.cov(b.numpy().T)
    root = linalg.sqrtm(s_a @ s_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-8
    # KID: StyleGAN3's estimator, written out for one subset holding every feature
    x, y = a[:200].numpy(), b.numpy()
    n, d = 200, 8
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    direct = ((kxx.sum() - np.diag(kxx).sum() + kyy.sum() - np.diag(kyy).sum()) / (n - 1) - kxy.sum() * 2 / n) / n
    assert kernel_inception_distance(a[:200], b, subsets=1) == pytest.approx(direct, rel=1e-9)
    assert kernel_inception_distance(a, b) > 10 * abs(kernel_inception_distance(a[:150], a[150:]))


def test_eval_gan_image_quality_with_a_user_detector(gan_run, tmp_path):
    import pickle

    from omnifast.gan.evaluate import evaluate_gan
    from omnifast.gan.metrics import InceptionFeatures

    detector = _TinyDetector()
    scripted = tmp_path / "detector.pt"
    torch.jit.save(torch.jit.script(detector), str(scripted))
    pickled = tmp_path / "detector.pkl"  # a pickled module with the detector's signature
    pickled.write_bytes(pickle.dumps(detector))
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    assert torch.equal(InceptionFeatures(str(scripted))(images), InceptionFeatures(str(pickled))(images))
    report = evaluate_gan(str(gan_run), samples=1, mesh_resolution=32, log=lambda *a: None, quality_images=8,
                          inception=str(scripted))
    assert report["control"]["expression_mm"]["mean"] > 0  # one sample's expression change is a real change
    quality = report["quality"]
    assert quality["images"] == 8 and all(math.isfinite(quality[k]) for k in ("fd_random", "fid", "kid"))
    assert quality["fid"] > 0 and quality["fd_random"] > 0
    (tmp_path / "junk.pt").write_bytes(b"not a network")
    with pytest.raises(ValueError, match="--inception: .*junk.pt is neither a TorchScript file"):
        InceptionFeatures(str(tmp_path / "junk.pt"))


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_a_failed_video_write_keeps_the_old_file(tmp_path, monkeypatch, ext):
    import imageio.v2 as imageio

    from omnifast.gan.commands import write_video

    path = tmp_path / f"sweep{ext}"
    frames = [np.full((16, 16, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    write_video(str(path), frames)
    before = path.read_bytes()
    assert len(before) > 0
    # ffmpeg failing on a full disk: the writer returns, having written nothing
    monkeypatch.setattr(imageio, "mimwrite", lambda target, *args, **kwargs: open(target, "wb").close())
    with pytest.raises(OSError, match="could not be written"):
        write_video(str(path), frames)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary left


def test_a_new_run_refuses_a_folder_that_is_not_a_stage_two_run(stage_one, tmp_path):
    for folder in (stage_one / "sdf", stage_one / "data"):  # a stage I run, a dataset
        before = {name: os.path.getmtime(folder / name) for name in os.listdir(folder)}
        with pytest.raises(RunError, match="is not empty and not a stage II run"):
            train_gan(config_for(stage_one, steps=1), str(folder), progress=False)
        assert {name: os.path.getmtime(folder / name) for name in os.listdir(folder)} == before
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me")
    with pytest.raises(RunError, match=r"notes is not empty and not a stage II run \(it holds todo.txt\)"):
        train_gan(config_for(stage_one, steps=1), str(mine), progress=False)
    assert (mine / "todo.txt").read_text() == "keep me"
    run = str(tmp_path / "run")
    train_gan(config_for(stage_one, steps=1), run, progress=False)
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        train_gan(config_for(stage_one, steps=1), run, progress=False)


@pytest.mark.parametrize("name, value, message", [
    ("geometry_prior", float("nan"), "geometry_prior must be a finite number >= 0, got nan"),
    ("lr_g", -0.001, "lr_g must be a finite number > 0, got -0.001"),
    ("lr_d", float("inf"), "lr_d must be a finite number > 0, got inf"),
    ("r1_gamma", "1", "r1_gamma must be a finite number >= 0, got '1'"),
    ("gpc_prob", 1.5, r"gpc_prob must be a probability in \[0, 1\], got 1.5"),
    ("seed", 2 ** 64, r"seed must be an integer in \[0, 2\^63\), got 18446744073709551616"),
    ("nrr_fade_kimg", 0, "nrr_fade_kimg must be a finite number > 0, got 0"),
    ("recompute_full_resolution", "yes", "recompute_full_resolution must be true or false, got 'yes'"),
    ("mixed_precision", 1, "mixed_precision must be true or false, got 1"),
    # the generator's and the renderer's settings are checked with the run's, by name
    ("generator", dict(grid_resolution=100), "GeneratorConfig: grid_resolution must be a power of two >= 4, got 100"),
    ("generator", dict(z_dim="64"), "GeneratorConfig: z_dim must be an integer >= 1, got '64'"),
    ("generator", dict(sr_channels=[32]), r"GeneratorConfig: sr_channels must be empty \(EG3D's\) or two positive"),
    ("generator", dict(pose_noise=float("nan")), "GeneratorConfig: pose_noise must be a finite number >= 0, got nan"),
    ("generator", dict(decoder_activation="relu"), "GeneratorConfig: decoder_activation must be one of"),
    ("generator", dict(background=1), "GeneratorConfig: background must be true or false, got 1"),
    ("render", dict(depth_resolution=1), "RenderConfig: depth_resolution must be an integer >= 2, got 1"),
])
def test_nonsense_settings_are_refused_by_name(tmp_path, name, value, message):
    with pytest.raises(RunError, match=message):
        config_for(tmp_path, **{name: value})


def test_init_from_a_run_starts_from_its_weights(stage_one, gan_run, tmp_path):
    source = RunFolder(str(gan_run)).load_checkpoint(("G", "D", "G_ema"))
    config = config_for(stage_one, steps=1, warp="mesh", init=str(gan_run))
    run = GANRun(config)
    report = run.initialise_from(config.init)
    assert all(not r["kept"] and not r["widened"] for r in report.values())
    for key in ("G", "D", "G_ema"):
        for name, value in getattr(run, key).state_dict().items():
            assert torch.equal(value, source[key][name]), (key, name)
    # The command records the source, trains from it, and refuses --init with --resume.
    out = tmp_path / "from-run"
    train_gan(config, str(out), progress=False, log=lambda *a: None)
    assert RunFolder(str(out)).read_config()["init"] == os.path.abspath(str(gan_run))
    from omnifast.cli import main as cli_main
    assert cli_main(["train-gan", "--out", str(out), "--resume", "--init", str(gan_run)]) == 2
    assert cli_main(["train-gan", "--out", str(tmp_path / "empty-init"), "--init", ""]) == 2
    with pytest.raises(ValueError, match="init must be the path"):
        config_for(stage_one, init=5)
    with pytest.raises(RunError, match="no such file or folder"):
        GANRun(config).initialise_from(str(tmp_path / "missing"))


def test_init_from_an_eg3d_pickle_copies_the_backbone_and_widens_the_label(stage_one, tmp_path):
    import eg3d_networks_local as local

    networks = local.build_networks(128, seed=5)
    pkl = tmp_path / "network-snapshot.pkl"
    local.dump_snapshot(networks, str(pkl))
    config = config_for(stage_one, generator=dict(z_dim=512, w_dim=512, grid_resolution=256, grid_channels=32,
                                                  triplane_depth=1, channel_base=1024, channel_max=64,
                                                  feature_channels=32),
                        d_channel_base=1024, d_channel_max=64, init=str(pkl))
    run = GANRun(config, dataset=_dataset_at(stage_one, 128))
    report = run.initialise_from(config.init)
    G, D = networks["G"].state_dict(), networks["D"].state_dict()
    # The backbone (mapping and tri-plane synthesis) and EG3D's super-resolution come over whole.
    for name, value in run.G.state_dict().items():
        if name.startswith(("backbone.", "superresolution.")):
            assert torch.equal(value, G[name].float()), name
    assert all(name.startswith(("decoder.", "renderer.")) for name in report["G"]["kept"])  # OmniAvatar's own
    # D: every block; the label embedding reads EG3D's 25 camera numbers as before and FLAME from zero.
    assert report["D"]["widened"] == ["mapping.embed.weight"]
    assert all(name.startswith("regress.") for name in report["D"]["kept"])
    c = torch.randn(3, run.D.c_dim)
    ours = run.D.mapping.embed(c)
    theirs = torch.nn.functional.linear(c[:, :25], D["mapping.embed.weight"].float() / 5, D["mapping.embed.bias"].float())
    torch.testing.assert_close(ours, theirs)


def _dataset_at(stage_one, resolution):
    """The tests' dataset, its images resized to ``resolution`` (labels unchanged)."""
    from omnifast.data import ImageDataset

    dataset = ImageDataset(str(stage_one / "data"))
    dataset.resolution = resolution
    return dataset


def test_generate_draws_flame_parameters_from_a_label_pool(gan_run, tmp_path):
    import subprocess
    import sys

    from omnifast.flame.model import ParamLayout
    from omnifast.gan.generate import read_label_pool, rows_for_seeds

    # OmniAvatar's pool: 25 camera numbers, 100 shape, 100 expression, neck and jaw.
    rng = np.random.default_rng(0)
    pool = np.concatenate([rng.normal(size=(5, 25)), rng.normal(size=(5, 206)) * 0.5], 1).astype(np.float32)
    pool[:, 25 + 200:] *= 0.1
    path = tmp_path / "ffhq_labels.npy"
    np.save(path, pool)
    layout = ParamLayout(10, 10)
    params = read_label_pool(str(path), layout)
    expected = np.concatenate([pool[:, 25:35], pool[:, 125:135], pool[:, 225:231]], 1)
    np.testing.assert_array_equal(params.numpy(), expected)
    rows = rows_for_seeds(params, [3, 4, 3])
    assert torch.equal(rows[0], rows[2])
    out = tmp_path / "pool.png"
    result = subprocess.run([sys.executable, "-m", "omnifast", "generate", str(gan_run), "--labels", str(path),
                             "--seeds", "0-1", "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for bad, message in ((pool[:, :100], "rows must hold 25 camera numbers"), (pool * np.inf, "non-finite")):
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(ValueError, match=message):
            read_label_pool(str(tmp_path / "bad.npy"), layout)
    result = subprocess.run([sys.executable, "-m", "omnifast", "generate", str(gan_run), "--labels", str(path),
                             "--params", "jaw=0.1", "--out", str(out), "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "give one" in result.stderr
