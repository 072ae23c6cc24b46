"""The semantic SDF: data sampler, network, losses, training, checkpoints and the commands."""
import csv
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("smplx", reason="the FLAME loader needs smplx (pip install -e '.[test]')")

from omnifast import runs  # noqa: E402
from omnifast.cli import main as cli_main  # noqa: E402
from omnifast.flame import Flame  # noqa: E402
from omnifast.reference.mesh import closest_point as closest_point_brute_force  # noqa: E402
from omnifast.sdf import (  # noqa: E402
    LossWeights,
    NetworkConfig,
    ParamDistribution,
    SDFSampler,
    SemanticSDF,
    eikonal_loss,
    iso_loss,
    semantic_loss,
    semantic_sdf_losses,
)
from omnifast.sdf import train as train_module  # noqa: E402
from omnifast.sdf.export import parse_params, read_ply  # noqa: E402
from omnifast.sdf.train import TrainConfig, load_run, train  # noqa: E402

from conftest import DEVICES  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
TINY = NetworkConfig(hidden=32, layers=3, skip=2, frequencies=2, condition=16)


@pytest.fixture(scope="module")
def flame(flame_dir):
    return Flame(flame_dir, n_shape=20, n_expr=10, dtype=torch.float64)


@pytest.fixture(scope="module")
def sampler(flame):
    return SDFSampler(flame, surface_points=256, space_points=512)


def tiny_config(flame_dir, **changes):
    base = dict(flame_dir=flame_dir, n_shape=20, n_expr=10, steps=6, batch=2, surface_points=128,
                space_points=128, network=TINY, eval_every=3, checkpoint_every=3, eval_meshes=2,
                eval_points=128)
    base.update(changes)
    return TrainConfig(**base)


def test_sampler_ground_truth_matches_brute_force(flame, sampler):
    g = torch.Generator().manual_seed(3)
    batch = sampler.sample(2, g)
    assert batch.surface_points.shape == (2, 256, 3) and batch.space_points.shape == (2, 512, 3)
    verts = flame.caps.verts(flame(batch.params))
    faces = flame.caps.faces
    for b in range(2):
        pick = torch.randperm(512, generator=g)[:40]
        truth = closest_point_brute_force(batch.space_points[b:b + 1, pick], verts[b:b + 1], faces, sign="winding")
        torch.testing.assert_close(batch.space_sdf[b:b + 1, pick], truth.distance, atol=1e-9, rtol=0)
    # Signs: the head's centre is inside, the box corners outside.
    assert float(batch.space_sdf.min()) < 0 < float(batch.space_sdf.max())
    # Surface samples lie on the posed mesh, with unit normals; canonical points on the canonical mesh.
    on = closest_point_brute_force(batch.surface_points[:1, :50], verts[:1], faces, sign="none")
    assert float(on.distance.max()) < 1e-9
    torch.testing.assert_close(batch.surface_normals.norm(dim=-1), torch.ones(2, 256, dtype=torch.float64))
    canonical_hit = closest_point_brute_force(batch.surface_canonical[:1, :50], sampler.canonical_verts[None], faces,
                                              sign="none")
    assert float(canonical_hit.distance.max()) < 1e-9
    # The flags say which samples landed on caps (the neck cap is large enough to be hit).
    assert batch.surface_on_cap.dtype == torch.bool and bool(batch.surface_on_cap.any())


def test_ground_truth_sign_holds_where_an_expression_folds_the_surface(flame_dir):
    """At this draw the synthetic head's lips fold: a folded vertex's pseudonormal points the
    wrong way, and with it points up to 9 cm in front of the face read inside (negative), for
    stage I's ground truth and for the exact-prior warp of stage II. The winding number gets
    them right."""
    from omnifast.render.warp import MeshWarp
    from omnifast.sdf.data import ParamDistribution

    flame = Flame(flame_dir, n_shape=10, n_expr=10, dtype=torch.float64)
    params = ParamDistribution().sample(flame.layout, 1, torch.Generator().manual_seed(0)).double()
    verts = flame.caps.verts(flame(params))
    front = float(verts[0, :, 2].max())
    axes = torch.linspace(-0.04, 0.04, 5), torch.linspace(-0.12, 0.0, 13), torch.linspace(front + 0.01, 0.2, 10)
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 3).double()
    sampler = SDFSampler(flame, surface_points=8, space_points=points.shape[1])
    pseudonormal = sampler.index.closest_point(points, verts, sign="pseudonormal").distance
    assert int((pseudonormal < 0).sum()) > 0  # the fold is there: this sign gets some wrong
    sampler._space_points = lambda *args: points  # the sampler's own path, at these points
    batch = sampler.sample(1, params=params)
    assert bool((batch.space_sdf > 0).all()), int((batch.space_sdf <= 0).sum())
    distance, _ = MeshWarp(flame, torch.zeros(3), 1.0).flame_space(points, params, "omnifast")
    assert bool((distance > 0).all())
    distance, _ = MeshWarp(flame, torch.zeros(3), 1.0).flame_space(points, params, "reference")
    assert bool((distance > 0).all())


def test_sampler_canonical_parameters_map_surface_onto_itself(flame, sampler):
    params = flame.canonical_params.unsqueeze(0)
    batch = sampler.sample(1, torch.Generator().manual_seed(0), params=params)
    torch.testing.assert_close(batch.surface_canonical, batch.surface_points, atol=1e-12, rtol=0)
    # Off the surface the map follows the interpolated normal instead of the face's: it moves a
    # point by at most |n_face - n_interpolated| |s| <= 2 |s|, and by little near the surface.
    moved = (batch.space_canonical - batch.space_points).norm(dim=-1)
    assert bool((moved <= 2 * batch.space_sdf.abs() + 1e-12).all())
    near = batch.space_sdf.abs() < 0.002
    assert float(moved[near].max()) < 0.002
    torch.testing.assert_close(batch.frames, torch.eye(4, dtype=torch.float64).unsqueeze(0))


def test_parameter_distribution_is_configurable(flame):
    wide = ParamDistribution(jaw_open_max=0.5, neck_std=0.0, expression_std=0.0)
    params = wide.sample(flame.layout, 500, torch.Generator().manual_seed(0), dtype=torch.float64)
    parts = flame.layout.unpack(params)
    assert float(parts["neck"].abs().max()) == 0 and float(parts["expression"].abs().max()) == 0
    assert 0.45 < float(parts["jaw"][:, 0].max()) <= 0.5 and float(parts["jaw"][:, 0].min()) >= 0
    assert 0.9 < float(parts["shape"].std()) < 1.1


def test_losses_vanish_on_an_exact_sdf_and_not_otherwise():
    radius = 0.1
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(1, 200, 3, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    space = torch.randn(1, 200, 3, generator=g, dtype=torch.float64) * 0.1
    surface = direction * radius

    def field(points, stretch):
        points = points.detach().requires_grad_(True)
        sdf = stretch * (points.norm(dim=-1) - radius)
        return sdf, torch.autograd.grad(sdf.sum(), points, create_graph=True)[0]

    sdf, grad = field(surface, 1.0)
    value, normal_error = iso_loss(sdf, grad, direction)
    assert float(value.detach()) < 1e-15 and float(normal_error.detach()) < 1e-12
    _, grad_space = field(space, 1.0)
    assert float(eikonal_loss(grad_space)) < 1e-20
    _, grad_stretched = field(space, 1.5)  # same zero set, not a distance
    assert float(eikonal_loss(grad_stretched)) == pytest.approx(0.25)
    _, grad_surface = field(surface, 1.5)
    assert float(iso_loss(sdf, grad_surface, direction)[1]) == pytest.approx(0.5)
    assert float(iso_loss(sdf + 0.01, grad, direction)[0]) == pytest.approx(0.01)
    assert float(semantic_loss(surface, surface)) == 0
    assert float(semantic_loss(surface + torch.tensor([0.0, 0.0, 0.003], dtype=torch.float64), surface)) \
        == pytest.approx(0.003)


def _model(sampler, flame, config=TINY):
    return SemanticSDF(flame.layout.size, sampler.box_min, sampler.box_max,
                       ParamDistribution().scale(flame.layout), config).double()


def test_network_starts_as_a_sphere_with_identity_correspondence(flame, sampler):
    torch.manual_seed(0)
    model = _model(sampler, flame, NetworkConfig())
    params = ParamDistribution().sample(flame.layout, 2, torch.Generator().manual_seed(1), dtype=torch.float64)
    points = model.centre.double() + (torch.rand(2, 300, 3, dtype=torch.float64) * 2 - 1) * 0.8 * model.scale
    out = model(points, params, with_gradient=True)
    radius = (points - model.centre).norm(dim=-1) / model.scale
    expected = (radius - model.config.init_radius) * model.scale
    correlation = torch.corrcoef(torch.stack([out.sdf.flatten(), expected.flatten()]))[0, 1]
    assert float(correlation) > 0.9  # geometric initialisation is sphere-like, not exact
    assert float(out.sdf[radius < 0.2].max()) < 0 < float(out.sdf[radius > 0.8].min())
    torch.testing.assert_close(out.canonical, points)
    assert 0.7 < float(out.gradient.norm(dim=-1).mean()) < 1.3
    # The parameters enter with zero weight at first.
    torch.testing.assert_close(model(points, params.flip(0)).sdf.flip(0), model(points.flip(0), params).sdf)


def test_network_continues_outside_its_box_and_undoes_frames(flame, sampler):
    torch.manual_seed(0)
    model = _model(sampler, flame)
    params = torch.zeros(1, flame.layout.size, dtype=torch.float64)
    centre, scale = model.centre.double(), float(model.scale)
    edge = centre + torch.tensor([[[0.0, scale, 0.0]]], dtype=torch.float64)
    beyond = edge + torch.tensor([[[0.0, 0.05, 0.0]]], dtype=torch.float64)
    s_edge, s_beyond = model(edge, params).sdf, model(beyond, params).sdf
    assert float(s_beyond - s_edge) == pytest.approx(0.05)
    angle = torch.tensor(0.4, dtype=torch.float64)
    frame = torch.eye(4, dtype=torch.float64)
    frame[:3, :3] = torch.tensor([[1, 0, 0], [0, angle.cos(), -angle.sin()], [0, angle.sin(), angle.cos()]])
    frame[:3, 3] = torch.tensor([0.01, -0.02, 0.03])
    points = centre + torch.randn(1, 50, 3, dtype=torch.float64) * 0.05
    moved = points @ frame[:3, :3].T + frame[:3, 3]
    a, b = model(points, params), model(moved, params, frame.unsqueeze(0))
    torch.testing.assert_close(a.sdf, b.sdf)
    torch.testing.assert_close(a.canonical, b.canonical)


def test_network_gradient_is_the_derivative_and_twice_differentiable(flame, sampler):
    torch.manual_seed(0)
    model = _model(sampler, flame)
    params = torch.randn(1, flame.layout.size, dtype=torch.float64)
    points = (model.centre.double() + torch.randn(1, 5, 3, dtype=torch.float64) * 0.05).requires_grad_(True)
    torch.autograd.gradcheck(lambda x: model(x, params).sdf, (points,))
    torch.autograd.gradgradcheck(lambda x: model(x, params).sdf, (points,))
    out = model(points, params, with_gradient=True)
    expected, = torch.autograd.grad(model(points, params).sdf.sum(), points)
    torch.testing.assert_close(out.gradient, expected)


def test_network_rejects_bad_shapes(flame, sampler):
    model = _model(sampler, flame)
    params = torch.zeros(2, flame.layout.size, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"points must be \[B, N, 3\]"):
        model(torch.zeros(2, 5, 2, dtype=torch.float64), params)
    with pytest.raises(ValueError, match=r"params must be \[B, 36\]"):
        model(torch.zeros(3, 5, 3, dtype=torch.float64), params)
    with pytest.raises(ValueError, match=r"frames must be \[B, 4, 4\]"):
        model(torch.zeros(2, 5, 3, dtype=torch.float64), params, torch.eye(4).expand(3, 4, 4))


def test_losses_on_a_batch_cover_every_term(flame, sampler):
    torch.manual_seed(0)
    model = _model(sampler, flame)
    batch = sampler.sample(2, torch.Generator().manual_seed(0))
    total, terms = semantic_sdf_losses(model, batch, LossWeights())
    assert set(terms) == {"iso", "normal", "eikonal", "semantic", "sdf", "correspondence"}
    assert all(v > 0 for v in terms.values())
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    only_sdf = LossWeights(iso=0, normal=0, eikonal=0, semantic=0, sdf=1, correspondence=0)
    total, terms = semantic_sdf_losses(model, batch, only_sdf)
    assert float(total) == pytest.approx(terms["sdf"])


def _log_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_short_training_lowers_the_loss(flame_dir, tmp_path):
    config = tiny_config(flame_dir, steps=40, eval_every=40, checkpoint_every=40, lr=3e-3)
    metrics = train(config, str(tmp_path), progress=False, log=lambda *_: None)
    rows = _log_rows(tmp_path / train_module.TRAIN_LOG)
    losses = [float(r["total"]) for r in rows]
    assert len(rows) == 40
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8
    assert metrics["near_mean"] > 0 and metrics["meshes"] == 2
    evaluations = _log_rows(tmp_path / train_module.EVAL_LOG)
    assert [int(r["step"]) for r in evaluations] == [40]


def test_resume_continues_exactly(flame_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(flame_dir), str(straight), progress=False, log=lambda *_: None)
    train(tiny_config(flame_dir, checkpoint_every=2), str(split), progress=False, log=lambda *_: None,
          stop_after=3)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(tiny_config(flame_dir), str(split), progress=False)
    train(None, str(split), resume=True, progress=False, log=lambda *_: None)
    a, b = load_run(str(straight)), load_run(str(split))
    assert a.step == b.step == 6
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    rows_a, rows_b = _log_rows(straight / train_module.TRAIN_LOG), _log_rows(split / train_module.TRAIN_LOG)
    assert [r["total"] for r in rows_a] == [r["total"] for r in rows_b]


def test_checkpoint_write_is_atomic(flame_dir, tmp_path, monkeypatch):
    train(tiny_config(flame_dir), str(tmp_path), progress=False, log=lambda *_: None, stop_after=3)
    before = torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)["step"]

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(runs.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train(None, str(tmp_path), resume=True, progress=False, log=lambda *_: None)
    monkeypatch.undo()
    assert load_run(str(tmp_path)).step == before == 3  # the old checkpoint is intact
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_stale_temporaries_are_removed_when_a_run_starts(flame_dir, tmp_path):
    """A process killed during a save leaves checkpoint.pt.tmp<pid> behind: the next run in the
    folder removes it (a live process's temporary is left alone)."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f"checkpoint.pt.tmp{dead}").write_bytes(b"half")
    (tmp_path / f"config.json.tmp{os.getppid()}").write_text("{")  # a live process (our parent)
    train(tiny_config(flame_dir, steps=1), str(tmp_path), progress=False, log=lambda *_: None)
    names = os.listdir(tmp_path)
    assert f"checkpoint.pt.tmp{dead}" not in names and f"config.json.tmp{os.getppid()}" in names


def test_checkpoints_load_without_running_code(flame_dir, tmp_path):
    """Checkpoints hold tensors and plain data only and are read with weights_only=True: a
    checkpoint that would run code when unpickled is refused, with the file's name."""
    import pickle

    train(tiny_config(flame_dir, steps=1), str(tmp_path), progress=False, log=lambda *_: None)
    assert torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)["step"] == 1
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / runs.CHECKPOINT, "wb") as f:
        pickle.dump({"config": {}, "payload": Payload()}, f)
    with pytest.raises(runs.RunError, match=r"checkpoint.pt: not a readable checkpoint"):
        load_run(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("content,message", [
    (b"", "not a readable checkpoint"), (b"garbage" * 10, "not a readable checkpoint"),
    (None, "incomplete checkpoint, missing 'model'")])
def test_bad_checkpoints_name_the_file(flame_dir, tmp_path, content, message):
    train(tiny_config(flame_dir, steps=1), str(tmp_path), progress=False, log=lambda *_: None)
    path = tmp_path / runs.CHECKPOINT
    if content is None:
        state = torch.load(path, weights_only=True)
        del state["model"]
        torch.save(state, path)
    else:
        path.write_bytes(content)
    with pytest.raises(runs.RunError, match=f"{path}: {message}"):
        load_run(str(tmp_path))


def test_parse_params(flame):
    params = parse_params(flame.layout, ["jaw=0.3", "expression=1,2", "neck=0,0.2"])
    parts = flame.layout.unpack(params)
    assert parts["jaw"].tolist()[0] == pytest.approx([0.3, 0, 0])
    assert parts["expression"][0, :3].tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="NAME one of"):
        parse_params(flame.layout, ["pose=1"])
    with pytest.raises(ValueError, match="jaw takes at most 3 values"):
        parse_params(flame.layout, ["jaw=1,2,3,4"])
    for bad in ("jaw=nan", "jaw=0,inf"):
        with pytest.raises(ValueError, match="jaw values must be finite numbers"):
            parse_params(flame.layout, [bad])
    with pytest.raises(ValueError, match="jaw takes comma-separated numbers, got 'open'"):
        parse_params(flame.layout, ["jaw=open"])


def test_commands_end_to_end(flame_dir, tmp_path, capsys):
    flame_out, run = tmp_path / "flame", tmp_path / "run"
    assert cli_main(["make-flame", str(flame_out)]) == 0
    assert sorted(os.listdir(flame_out)) == ["FLAME_NEUTRAL.pkl", "flame_static_embedding.pkl"]
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"distribution": {"jaw_open_max": 0.1, "neck_std": 0.0}, "eval_meshes": 1}))
    assert cli_main(["train-sdf", "--flame-dir", str(flame_out), "--out", str(run), "--steps", "2",
                     "--batch", "1", "--surface-points", "64", "--space-points", "64", "--device", "cpu",
                     "--config", str(settings), "--n-shape", "12", "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["distribution"]["jaw_open_max"] == 0.1 and saved["distribution"]["shape_std"] == 1.0
    assert saved["n_shape"] == 12 and saved["batch"] == 1 and saved["eval_meshes"] == 1
    assert cli_main(["train-sdf", "--flame-dir", str(flame_out), "--out", str(run), "--steps", "3",
                     "--resume", "--no-progress"]) == 0
    assert load_run(str(run)).step == 3
    assert cli_main(["eval-sdf", str(run), "--meshes", "2", "--points", "64"]) == 0
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["step"] == 3 and metrics["meshes"] == 2 and metrics["near_mean_pct"] > 0
    mesh, sheet = tmp_path / "head.ply", tmp_path / "previews.png"
    assert cli_main(["export-sdf", str(run), "--params", "jaw=0.2", "--out", str(mesh),
                     "--resolution", "24", "--previews", str(sheet), "--preview-size", "48"]) == 0
    verts, faces = read_ply(str(mesh))
    assert verts.shape[0] > 100 and faces.shape[1] == 3 and int(faces.max()) < verts.shape[0]
    from PIL import Image

    with Image.open(sheet) as image:
        assert image.size[0] == 5 * 48 and len(np.unique(np.asarray(image.convert("L")))) > 10
    out = capsys.readouterr().out
    assert "near-surface |s - s*| mean" in out and "wrote" in out


@pytest.mark.parametrize("device", DEVICES)
def test_training_evaluation_and_render_on_each_device(flame_dir, tmp_path, device):
    """Everything on the training device: FLAME, samples and ground truth, the steps, the
    held-out evaluation and a preview render through the compositing kernels."""
    from omnifast.sdf.evaluate import evaluate, held_out_params
    from omnifast.sdf.export import render_image

    metrics = train(tiny_config(flame_dir, device=device), str(tmp_path), progress=False, log=lambda *_: None)
    run = load_run(str(tmp_path), device)
    assert run.sampler.canonical_verts.device.type == device
    assert next(run.model.parameters()).device.type == device
    again = evaluate(run, held_out_params(run, run.config.eval_meshes), run.config.eval_points)
    assert again["near_mean"] == pytest.approx(metrics["near_mean"], rel=1e-5)
    image = render_image(run.model, run.flame, parse_params(run.flame.layout, ["jaw=0.2"]), size=24, coarse=8, fine=8)
    assert image.shape == (24, 24, 3) and image.min() < 250  # the head covers part of the view


# ---- the command line: errors a user can cause are one clear line and a non-zero exit

def run_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "omnifast", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from omnifast.flame import make_synthetic_flame

    root = tmp_path_factory.mktemp("cli")
    make_synthetic_flame(str(root / "flame"))
    train(tiny_config(str(root / "flame"), steps=2), str(root / "run"), progress=False, log=lambda *_: None)
    return root


def one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and lines, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--steps", "-3"), ("--eval-every", "0"),
                                        ("--checkpoint-every", "0"), ("--batch", "0"), ("--lr", "nan")])
def test_train_sdf_rejects_bad_counts(tiny_run, tmp_path, flag, value):
    result = run_cli("train-sdf", "--flame-dir", tiny_run / "flame", "--out", tmp_path / "run", flag, value)
    one_line_error(result, f"argument {flag}")
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_refuses_changed_settings(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    result = run_cli("train-sdf", "--out", run, "--resume", "--batch", "9", "--steps", "3", "--no-progress")
    one_line_error(result, "config.json: the run has batch=2", "got batch=9")
    result = run_cli("train-sdf", "--out", run, "--resume", "--lr", "0.5", "--steps", "3", "--no-progress")
    one_line_error(result, "the run has lr=", "got lr=0.5")
    assert load_run(str(run)).step == 2  # nothing trained
    result = run_cli("train-sdf", "--out", run, "--resume", "--steps", "3", "--no-progress")
    assert result.returncode == 0, result.stderr  # same settings, more steps: fine
    assert load_run(str(run)).step == 3


def test_eval_and_export_reject_bad_sizes_and_params(tiny_run, tmp_path):
    one_line_error(run_cli("eval-sdf", tiny_run / "run", "--meshes", "0"), "argument --meshes")
    one_line_error(run_cli("export-sdf", tiny_run / "run", "--out", tmp_path / "m.ply", "--resolution", "0"),
                   "argument --resolution")
    one_line_error(run_cli("export-sdf", tiny_run / "run", "--out", tmp_path / "m.ply", "--params", "jaw=nan"),
                   "jaw values must be finite numbers")


@pytest.mark.parametrize("content,message", [(b"", "not a readable checkpoint"),
                                             (b"\x80\x02garbage", "not a readable checkpoint")])
def test_commands_name_a_bad_checkpoint(tiny_run, tmp_path, content, message):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    for command in (("eval-sdf", tmp_path), ("export-sdf", tmp_path, "--out", tmp_path / "m.ply")):
        one_line_error(run_cli(*command), f"{tmp_path / 'checkpoint.pt'}: {message}")
    one_line_error(run_cli("eval-sdf", tmp_path / "nothing"), "no checkpoint")


@pytest.mark.parametrize("content,message", [("{not json", "not a readable JSON settings file"),
                                             ("[1, 2]", "expected a JSON object"),
                                             ('{"stepz": 3}', "unknown setting 'stepz'"),
                                             ('{"batch": "four"}', "batch must be a positive integer"),
                                             ('{"network": {"hidden": "16"}}',
                                              "NetworkConfig: hidden must be an integer >= 1, got '16'"),
                                             ('{"network": {"layers": 3, "skip": 3}}',
                                              "NetworkConfig: skip must be 0 (none) or a hidden layer"),
                                             ('{"weights": {"eikonal": -1}}',
                                              "LossWeights: eikonal must be a finite number >= 0, got -1"),
                                             ('{"distribution": {"neck_std": "0.1"}}',
                                              "ParamDistribution: neck_std must be a finite number >= 0")])
def test_train_sdf_names_a_bad_config_file(tiny_run, tmp_path, content, message):
    settings = tmp_path / "settings.json"
    settings.write_text(content)
    result = run_cli("train-sdf", "--flame-dir", tiny_run / "flame", "--out", tmp_path / "run", "--config", settings)
    one_line_error(result, str(settings), message)


def test_flame_file_with_a_short_template_names_it(tiny_run, tmp_path):
    """The array that disagrees with the others is the one blamed (it was blamed on shapedirs)."""
    import pickle
    import shutil

    folder = tmp_path / "flame"
    shutil.copytree(tiny_run / "flame", folder)
    with open(folder / "FLAME_NEUTRAL.pkl", "rb") as f:
        model = pickle.load(f)
    model["v_template"] = model["v_template"][:-7]
    with open(folder / "FLAME_NEUTRAL.pkl", "wb") as f:
        pickle.dump(model, f)
    with pytest.raises(ValueError, match=r"key 'v_template' must have shape \[5039, 3\], got \[5032, 3\]"):
        Flame(str(folder))
    one_line_error(run_cli("train-sdf", "--flame-dir", folder, "--out", tmp_path / "run"), "'v_template'")


def test_flame_loader_refuses_code_in_a_pickle(tiny_run, tmp_path):
    import shutil

    folder = tmp_path / "flame"
    shutil.copytree(tiny_run / "flame", folder)
    (folder / "FLAME_NEUTRAL.pkl").write_bytes(b"cos\nsystem\n(S'touch ran'\ntR.")
    with pytest.raises(ValueError, match="refusing to load os.system"):
        Flame(str(folder))
