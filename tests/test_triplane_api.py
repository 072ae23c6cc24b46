"""Registration (opcheck, torch.compile), bad input, the EG3D/OmniAvatar drop-ins, and the CLI."""
import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch

import omnifast
import omnifast.eg3d

import eg3d_local
import omniavatar_local
from conftest import DEVICES

EG3D_AXES = [0, 1, 0, 2, 2, 0]
OA_AXES = [0, 1, 2, 1, 2, 0, 0, 2, 1]


# ---------------------------------------------------------------------------------------------
# Operator registration

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("reduce", [0, 2])
def test_opcheck(device, dims, reduce):
    spatial = (5, 6) if dims == 2 else (2, 5, 6)
    axes = EG3D_AXES if dims == 2 else OA_AXES
    scale = [2.0, 1.5, 2.0]
    for requires_grad in (False, True):
        planes = torch.randn(2, 3, *spatial, 4, dtype=torch.float64, device=device,
                             requires_grad=requires_grad)
        coords = (torch.rand(2, 30, 3, dtype=torch.float64, device=device) - 0.5).requires_grad_(
            requires_grad)
        torch.library.opcheck(torch.ops.omnifast.triplane_sample,
                              (planes, coords, axes, scale, reduce))
        out_shape = (2, 3, 30, 4) if reduce == 0 else (2, 30, 4)
        grad_out = torch.randn(out_shape, dtype=torch.float64, device=device,
                               requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.omnifast.triplane_sample_backward,
                              (grad_out, planes, coords, axes, scale, reduce, True, True))
        # Its own derivative (a third order) raises by design, so its AOT check runs without grad.
        double_backward_checks = ("test_schema", "test_faketensor") + (
            () if requires_grad else ("test_aot_dispatch_dynamic",))
        torch.library.opcheck(
            torch.ops.omnifast.triplane_sample_double_backward,
            (torch.randn_like(planes), torch.randn_like(coords), grad_out, planes, coords, axes,
             scale, reduce, True, True, True),
            test_utils=double_backward_checks)
    torch.library.opcheck(torch.ops.omnifast.feature_last,
                          (torch.randn(2, 3, 4, *spatial, device=device),))


@pytest.mark.parametrize("dims", [2, 3])
def test_torch_compile_fullgraph_forward_and_backward(dims):
    spatial = (6, 7) if dims == 2 else (3, 6, 7)
    planes = torch.randn(2, 3, 5, *spatial, requires_grad=True)
    coords = (torch.rand(2, 50, 3) - 0.5).requires_grad_()

    def step(p, x):
        features = omnifast.triplane_sample(p, x, box_warp=1.2)
        return (features ** 2).mean()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(planes, coords)
    grads = torch.autograd.grad(loss, (planes, coords))
    ref_loss = step(planes, coords)
    ref_grads = torch.autograd.grad(ref_loss, (planes, coords))
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_torch_compile_inductor_training_step():
    """A first-order step through Inductor. (torch.compile's AOT-autograd graphs are not
    differentiable twice for any op; eikonal losses run the double backward in eager mode.)"""
    planes = torch.randn(1, 3, 4, 8, 8, requires_grad=True)
    coords = (torch.rand(1, 40, 3) - 0.5).requires_grad_()

    def step(p, x):
        features = omnifast.triplane_sample(p, x, reduce="none")
        return torch.nn.functional.softplus(features).mean()

    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(planes, coords)
    grads = torch.autograd.grad(loss, (planes, coords))
    ref_loss = step(planes, coords)
    ref_grads = torch.autograd.grad(ref_loss, (planes, coords))
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument, expected and actual

def planes_and_coords(**overrides):
    args = dict(planes=torch.randn(2, 3, 4, 5, 5), coords=torch.rand(2, 10, 3))
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,error,pattern", [
    (dict(planes=torch.randn(2, 3, 5, 5)), ValueError, r"planes must be \[N, 3, C, H, W\].*\[2, 3, 5, 5\]"),
    (dict(planes=torch.randn(2, 2, 4, 5, 5)), ValueError, r"planes must be .*got \[2, 2, 4, 5, 5\]"),
    (dict(coords=torch.rand(3, 10, 3)), ValueError, r"coords must be \[N, M, 3\] with N = 2.*\[3, 10, 3\]"),
    (dict(coords=torch.rand(2, 10, 2)), ValueError, r"coords must be \[N, M, 3\].*\[2, 10, 2\]"),
    (dict(coords=torch.rand(10, 3)), ValueError, r"coords must be \[N, M, 3\].*\[10, 3\]"),
    (dict(planes=torch.randint(0, 5, (2, 3, 4, 5, 5))), TypeError, r"planes must be float32, float64, float16 or bfloat16, got torch.int64"),
    (dict(coords=torch.randint(0, 5, (2, 10, 3))), TypeError, r"coords must be of the dtype of planes \(torch.float32\), got torch.int64"),
    (dict(coords=torch.rand(2, 10, 3, dtype=torch.float64)), TypeError, r"coords must be of the dtype of planes \(torch.float32\), got torch.float64"),
    (dict(planes=torch.randn(2, 3, 4, 5, 5).half()), TypeError, r"planes must be float32 or float64 on the CPU \(16-bit planes are CUDA-only\), got torch.float16"),
    (dict(planes=torch.randn(2, 3, 4, 5, 0)), RuntimeError, r"planes must be non-empty spatial sizes"),
    (dict(coords=torch.rand(2, 10, 3, device="meta")), ValueError, r"coords must be on the device of planes \(cpu\), got meta"),
    (dict(coords=[[0.0, 0.0, 0.0]]), TypeError, r"coords must be a torch.Tensor, got list"),
])
def test_bad_tensors_name_argument_expected_and_actual(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        omnifast.triplane_sample(**planes_and_coords(**overrides))


@pytest.mark.parametrize("bad,pattern", [
    (dict(planes=torch.randint(0, 5, (2, 3, 5, 5, 4))), r"planes must be float32, float64, float16 or bfloat16, got Long"),
    (dict(coords=torch.rand(2, 10, 3, dtype=torch.float64)), r"coords must be of the dtype of planes \(Float\), got Double"),
    (dict(coords=torch.rand(3, 10, 3)), r"coords must be \[N, M, 3\] with N = 2 \(from planes\), got \[3, 10, 3\]"),
    (dict(planes=torch.randn(2, 2, 5, 5, 4)), r"planes must be three planes in dim 1"),
    (dict(planes=torch.randn(2, 3, 5, 5, 4).half()), r"16-bit planes are CUDA-only"),
])
def test_raw_op_checks_before_running(bad, pattern):
    """The C++ op checks again for callers of torch.ops.omnifast directly."""
    args = dict(planes=torch.randn(2, 3, 5, 5, 4), coords=torch.rand(2, 10, 3))
    args.update(bad)
    with pytest.raises(RuntimeError, match=pattern):
        torch.ops.omnifast.triplane_sample(args["planes"], args["coords"], EG3D_AXES, [2.0] * 3, 2)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(reduce="max"), r"reduce must be one of \('none', 'sum', 'mean'\), got 'max'"),
    (dict(box_warp=0.0), r"box_warp must be a positive number or 3 positive numbers, got 0.0"),
    (dict(box_warp=(1.0, 2.0)), r"box_warp must be .*got \(1.0, 2.0\)"),
    (dict(axes="omniavatar"), r"axes for planes must be one of \('eg3d', 'fixed'\)"),
    (dict(axes=((0, 0), (0, 1), (1, 2))), r"axes must be 3 tuples of 2 distinct coordinate indices"),
    (dict(axes=((0, 1), (0, 3), (1, 2))), r"axes must be 3 tuples of 2 distinct"),
])
def test_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        omnifast.triplane_sample(**planes_and_coords(), **kwargs)


def test_backward_op_checks_grad_out():
    planes = torch.randn(2, 3, 5, 5, 4)
    coords = torch.rand(2, 10, 3)
    with pytest.raises(RuntimeError, match=r"grad_out must be of shape \[2, 10, 4\], got \[2, 10, 5\]"):
        torch.ops.omnifast.triplane_sample_backward(torch.randn(2, 10, 5), planes, coords,
                                                    EG3D_AXES, [2.0] * 3, 2, True, True)
    with pytest.raises(RuntimeError, match=r"axes must be 6 coordinate indices.*got 4"):
        torch.ops.omnifast.triplane_sample(planes, coords, [0, 1, 0, 2], [2.0] * 3, 2)
    with pytest.raises(RuntimeError, match=r"reduce must be 0 \(none\), 1 \(sum\) or 2 \(mean\), got 7"):
        torch.ops.omnifast.triplane_sample(planes, coords, EG3D_AXES, [2.0] * 3, 7)


def test_cuda_tensor_without_cuda_kernels_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(omnifast._C_loader._BACKENDS, "cuda", False)
    fake_cuda = types.SimpleNamespace(is_cuda=True)
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        omnifast._C_loader.require_backend("triplane_sample", fake_cuda)


# ---------------------------------------------------------------------------------------------
# Drop-ins for EG3D / OmniAvatar code

def assert_same_values_and_gradients(ours, theirs, inputs):
    """float32 values, and gradients for one random upstream gradient."""
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(theirs)
    for g, r in zip(torch.autograd.grad(ours, inputs, grad),
                    torch.autograd.grad(theirs, inputs, grad)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("plane_axes", ["eg3d", "fixed", "rotated"])
def test_sample_from_planes_matches_eg3d(device, plane_axes):
    if plane_axes == "eg3d":
        axes = eg3d_local.generate_planes()
    elif plane_axes == "fixed":
        axes = eg3d_local.generate_fixed_planes()
    else:  # not a permutation: must fall back to EG3D's own projection
        c, s = 0.8, 0.6
        rotation = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        axes = torch.stack([rotation, eg3d_local.generate_planes()[1], rotation.T])
    axes = axes.to(device)
    planes = torch.randn(2, 3, 32, 16, 12, device=device, requires_grad=True)
    coords = ((torch.rand(2, 500, 3, device=device) - 0.5) * 1.3).requires_grad_()
    ours = omnifast.eg3d.sample_from_planes(axes, planes, coords, box_warp=1.0)
    theirs = eg3d_local.sample_from_planes(axes, planes, coords, box_warp=1.0)
    assert ours.shape == (2, 3, 500, 32)
    assert_same_values_and_gradients(ours, theirs, (planes, coords))


def test_plane_axes_recognised_as_permutations():
    assert omnifast.eg3d.plane_axes_to_indices(eg3d_local.generate_planes()) == ((0, 1), (0, 2), (2, 0))
    assert omnifast.eg3d.plane_axes_to_indices(eg3d_local.generate_fixed_planes()) == ((0, 1), (1, 2), (2, 0))
    assert omnifast.eg3d.plane_axes_to_indices(eg3d_local.generate_planes() * 2) is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("depth,box_warp", [(1, 1.0), (3, 1.0), (2, [1.0, 1.5, 0.8])])
def test_sample_from_volplanes_matches_omniavatar(device, depth, box_warp):
    planes = torch.randn(2, 3, 8 * depth, 10, 12, device=device, requires_grad=True)
    coords = ((torch.rand(2, 300, 3, device=device) - 0.5) * 1.3).requires_grad_()
    ours = omnifast.eg3d.sample_from_volplanes(planes, coords, box_warp=box_warp,
                                               triplane_depth=depth)
    theirs = omniavatar_local.sample_from_volplanes(planes, coords, box_warp=box_warp,
                                              triplane_depth=depth)
    assert ours.shape == (2, 3, 300, 8)
    assert_same_values_and_gradients(ours, theirs, (planes, coords))


def test_sample_from_volplanes_rejects_customised_2d_sampler():
    with pytest.raises(ValueError, match="custimized_sample_op"):
        omnifast.eg3d.sample_from_volplanes(torch.randn(1, 3, 4, 5, 5), torch.rand(1, 3, 3),
                                            box_warp=1.0, custimized_sample_op=True)


def test_patch_swaps_the_renderer_module_functions():
    renderer = types.ModuleType("renderer")
    renderer.sample_from_planes = eg3d_local.sample_from_planes
    renderer.generate_planes = eg3d_local.generate_planes

    def run_model(planes, coords):  # how EG3D's ImportanceRenderer.run_model reaches it
        return renderer.sample_from_planes(renderer.generate_planes(), planes, coords,
                                           padding_mode='zeros', box_warp=1.0)

    planes = torch.randn(1, 3, 4, 8, 8)
    coords = torch.rand(1, 20, 3) - 0.5
    before = run_model(planes, coords)
    assert omnifast.eg3d.patch(renderer) == ["sample_from_planes"]
    assert renderer.sample_from_planes is omnifast.eg3d.sample_from_planes
    assert renderer._omnifast_originals["sample_from_planes"] is eg3d_local.sample_from_planes
    torch.testing.assert_close(run_model(planes, coords), before, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The command line

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "omnifast", *args], capture_output=True,
                          text=True, timeout=600, env=env)


def test_cli_info():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert f"omnifast: {omnifast.__version__}" in result.stdout
    assert f"torch: {torch.__version__}" in result.stdout
    assert "backends: cpu" in result.stdout


def test_cli_bench_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    result = run_cli("bench", "triplane", "--quick", "--device", "cpu", "--json", str(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(path.read_text())
    assert report["device_type"] == "cpu"
    passes = {(r["op"], r["case"], r["pass"]) for r in report["results"]}
    assert len(passes) == 6  # the tri-plane op only
    for row in report["results"]:
        assert row["omnifast_ms"] > 0 and row["reference_ms"] > 0
        assert row["speedup"] == pytest.approx(row["reference_ms"] / row["omnifast_ms"])
    assert "speedup" in result.stdout


def test_cli_bench_all_ops(tmp_path):
    path = tmp_path / "bench.json"
    result = run_cli("bench", "--quick", "--device", "cpu", "--json", str(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(path.read_text())
    ops = {r["op"] for r in report["results"]}
    assert ops == {"triplane_sample", "composite", "closest_point", "render", "train"}
    impls = {r["impl"] for r in report["results"] if r["op"] == "closest_point"}
    assert {"omnifast", "omnifast (pseudonormal)", "brute force (torch)"} <= impls
    # every peer is either measured or reported missing, with the reason
    peers = {"trimesh": "trimesh", "open3d": "open3d (Embree)", "warp": "warp (cpu)"}
    for peer, name in peers.items():
        assert (name in impls) != (peer in report["not_measured"])
    # compositing: nerfacc's dense path in the same rows, its packed (CUDA) path reported missing;
    # forward rows say how far each contender's outputs are from omnifast's
    for row in (r for r in report["results"] if r["op"] == "composite"):
        assert row["nerfacc (dense)_ms"] > 0
        assert row["nerfacc (dense)_speedup"] == pytest.approx(
            row["nerfacc (dense)_ms"] / row["omnifast_ms"])
        if row["pass"] == "forward":
            assert max(row["max_abs_diff_vs_omnifast"].values()) < 1e-4
    assert "CUDA" in report["not_measured"]["nerfacc (packed)"]


def test_cli_bench_render_rows_and_budget(tmp_path):
    path = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"  # omnifast's temporary files: none may be left behind
    scratch.mkdir()
    result = run_cli("bench", "render", "--quick", "--device", "cpu", "--memory-budget", "0.5", "--json", str(path),
                     env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    assert not [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")]  # torch's own cache
    report = json.loads(path.read_text())
    rows = report["results"]
    backends = ("omnifast", "reference", "reference+checkpoint")
    assert {(r["backend"], r["resolution"], r["pass"]) for r in rows} == {
        (b, r, p) for b in backends for r in (16, 32) for p in ("forward", "forward+backward")}
    assert {(r["backend"], r["sampling"], r["warp"]) for r in rows} == {
        *((b, "dense", "sdf") for b in backends), ("omnifast", "dense", "mesh"), ("omnifast", "proposal", "sdf")}
    for row in rows:
        assert row["ms"] > 0 and row["peak_bytes"] > 0 and 0 < row["warp_share"] < 1
        if row["warp"] == "sdf":
            assert row["max_resolution"] == report["render_max_resolution"][row["contender"]] > 0
        if row["sampling"] == "proposal":
            assert row["samples_per_ray"] == 6 and row["probe"]["resolution"] == row["resolution"] // 4
            assert math.isfinite(row["psnr_db"]) and row["depth_mae_mm"] >= 0 and 0 < row["silhouette_iou"] <= 1
        else:
            assert row["samples_per_ray"] == [8, 8] and "psnr_db" not in row
        assert row["ms_over_omnifast_dense"] == pytest.approx(
            row["ms"] / next(r["ms"] for r in rows if r["contender"] == "omnifast"
                             and (r["resolution"], r["pass"]) == (row["resolution"], row["pass"])))
    assert report["render_max_resolution"]["memory_budget_bytes"] == 2 ** 29
    assert "largest 1-image training render in 0.5 GiB" in result.stdout
    assert run_cli("bench", "render", "--memory-budget", "-1").returncode == 2


def test_cli_bench_train_rows(tmp_path):
    path = tmp_path / "bench.json"
    result = run_cli("bench", "train", "--quick", "--device", "cpu", "--json", str(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(path.read_text())
    rows = report["results"]
    contenders = ("omnifast", "reference", "reference+checkpoint", "omnifast proposal")
    assert [(r["op"], r["contender"], r["resolution"], r["sr_free"]) for r in rows] == [
        *(("train", c, 16, False) for c in contenders),
        *(("train", c, n, True) for n in (16, 32) for c in ("omnifast", "omnifast proposal"))]
    for row in rows:
        amortised = (row["plain_iteration_seconds"] + row["phases"]["G_reg"] / 4 + row["phases"]["D_reg"] / 16)
        assert row["seconds_per_iteration"] == pytest.approx(amortised)
        assert row["images_per_second"] == pytest.approx(row["batch"] / row["seconds_per_iteration"])
        assert row["kimg_per_day"] == pytest.approx(row["images_per_second"] * 86.4)
        assert {"data", "G_main", "D_main", "G_reg", "D_reg"} <= set(row["phases"])
        assert row["phases"]["D_reg"] > 0
        assert row["peak_bytes"] == row["static_bytes"] + row["extra_peak_bytes"] > 0
        assert row["image_resolution"] == (row["resolution"] if row["sr_free"] else 64)
        assert row["samples_per_ray"] == (6 if row["sampling"] == "proposal" else [6, 6])
        parts = row["part_seconds"]
        assert set(parts) == {"backbone", "warp", "renderer", "superresolution", "discriminator", "other"}
        used = ("backbone", "warp", "renderer", "discriminator", *(() if row["sr_free"] else ("superresolution",)))
        assert all(parts[p] > 0 for p in used) and (parts["superresolution"] == 0) == row["sr_free"]
        base = next(r for r in rows if r["contender"] == "omnifast" and
                    (r["resolution"], r["sr_free"]) == (row["resolution"], row["sr_free"]))
        assert row["seconds_over_omnifast_dense"] == pytest.approx(
            row["seconds_per_iteration"] / base["seconds_per_iteration"])
        if row["sr_free"]:
            fit = row["sr_free_projection"]
            assert fit["bytes_per_pixel"] > 0 and fit["resolution_80GB_batch4"] > 0
    assert rows[0]["speedup"] == pytest.approx(rows[1]["seconds_per_iteration"] / rows[0]["seconds_per_iteration"])
    assert "kimg/day" in result.stdout and "SR-free training, omnifast proposal" in result.stdout
    only = run_cli("bench", "train", "--quick", "--device", "cpu", "--sr-free", "--cases", "1", "--runs", "3",
                   "--json", str(path))
    assert only.returncode == 0, only.stderr
    rows = json.loads(path.read_text())["results"]
    assert [(r["contender"], r["resolution"], r["sr_free"]) for r in rows] == [
        ("omnifast", 16, True), ("omnifast proposal", 16, True)]
    for row in rows:  # each contender's three iterations of each kind, the median one reported
        times = row["iterations_seconds"]
        assert [len(times["plain"]), len(times["regularised"])] == [3, 3]
        assert row["plain_iteration_seconds"] == sorted(times["plain"])[1]
        assert row["regularised_iteration_seconds"] == sorted(times["regularised"])[1]


def test_cli_rejects_unknown_pass():
    result = run_cli("bench", "--quick", "--passes", "sideways")
    assert result.returncode == 2
    assert "unknown pass" in result.stderr
