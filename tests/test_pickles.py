"""Released EG3D networks through omnifast's importer: a local re-implementation of EG3D's network
layouts (tests/eg3d_networks_local.py, random weights in every tensor) pickled in EG3D's
persistence format is read by ``omnifast.gan.load_network_pkl`` without running code, and
omnifast's generator and discriminator give the same images, depth and logits in float64."""
import io
import json
import os
import pickle
import subprocess
import sys

import eg3d_networks_local as local
import numpy as np
import pytest
import torch

from omnifast.gan import load_network_pkl
from omnifast.gan.pickles import PickleError

import eg3d_local

# Neural rendering resolution and batch per image size (the 512^2 super-resolution dominates on a CPU).
# At 128^2 the render is the 2X module's input size: EG3D's in-place image_raw (see triplane.py).
SIZES = {128: dict(neural=64, batch=2), 256: dict(neural=16, batch=1), 512: dict(neural=16, batch=1)}


def cameras(n, dtype):
    poses = [eg3d_local.LookAtPoseSampler.sample(np.pi / 2 + yaw, np.pi / 2 - 0.1 * yaw,
                                                 torch.tensor([0, 0, 0.2]), radius=2.7)
             for yaw in np.linspace(-0.4, 0.4, n)]
    intrinsics = eg3d_local.FOV_to_intrinsics(18.837).reshape(1, 9).repeat(n, 1)
    return torch.cat([torch.cat(poses).reshape(n, 16), intrinsics], 1).to(dtype)


def _snapshot(resolution, tmp_path_factory):
    networks = local.build_networks(resolution, seed=resolution)
    path = tmp_path_factory.mktemp("pkl") / f"network-snapshot-{resolution}.pkl"
    with open(path, "wb") as f:
        local.dump_snapshot(networks, f)
    return resolution, networks, path


@pytest.fixture(scope="module", params=sorted(SIZES))
def snapshot(request, tmp_path_factory):
    return _snapshot(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def snapshot_128(tmp_path_factory):
    return _snapshot(128, tmp_path_factory)


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_every_tensor_keeps_its_name_and_shape(snapshot):
    _, networks, path = snapshot
    loaded = load_network_pkl(path)
    for key in ("G", "D", "G_ema"):
        theirs, ours = networks[key].state_dict(), loaded[key].state_dict()
        assert sorted(theirs) == sorted(ours), key
        for name, value in theirs.items():
            assert ours[name].shape == value.shape, name
            torch.testing.assert_close(ours[name], value.float(), rtol=0, atol=0, msg=name)
    assert loaded["G_ema"].neural_rendering_resolution == networks["G_ema"].neural_rendering_resolution
    assert loaded["augment_pipe"] is None and loaded["training_set_kwargs"]["resolution"] == snapshot[0]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float32, 2e-3)])
def test_the_imported_generator_and_discriminator_give_eg3d_s_outputs(snapshot, dtype, tolerance):
    resolution, networks, path = snapshot
    loaded = load_network_pkl(path)
    theirs, ours = networks["G_ema"].to(dtype), loaded["G_ema"].to(dtype)
    batch = SIZES[resolution]["batch"]
    z = torch.randn(batch, 512, generator=torch.Generator().manual_seed(3)).to(dtype)
    c = cameras(batch, dtype)
    results = []
    for G in (theirs, ours):
        torch.manual_seed(7)  # the same stratified and importance draws on both sides
        results.append(G(z, c, truncation_psi=0.7, truncation_cutoff=10,
                         neural_rendering_resolution=SIZES[resolution]["neural"], noise_mode="const"))
    for key in ("image", "image_raw", "image_depth"):
        assert results[1][key].shape == results[0][key].shape, key
        assert results[1][key].dtype == dtype
        assert relative_error(results[1][key], results[0][key]) <= tolerance, key
    assert results[0]["image"].shape[-1] == resolution
    D_theirs, D_ours = networks["D"].to(dtype), loaded["D"].to(dtype)
    images = {"image": results[0]["image"], "image_raw": results[0]["image_raw"]}
    logits_theirs, logits_ours = D_theirs(images, c), D_ours(images, c)
    assert logits_ours.shape == logits_theirs.shape == (batch, 1)
    assert relative_error(logits_ours, logits_theirs) <= tolerance


def test_eg3d_s_mapping_synthesis_and_sampling_interface(snapshot_128):
    _, networks, path = snapshot_128
    theirs, ours = networks["G_ema"].double(), load_network_pkl(path)["G_ema"].double()
    z, c = torch.randn(2, 512, dtype=torch.float64), cameras(2, torch.float64)
    ws = [G.mapping(z, c, truncation_psi=0.5) for G in (theirs, ours)]
    assert relative_error(ws[1], ws[0]) <= 1e-12 and ws[1].shape[1] == ours.backbone.num_ws
    points = torch.rand(2, 50, 3, dtype=torch.float64) - 0.5
    directions = torch.nn.functional.normalize(torch.randn(2, 50, 3, dtype=torch.float64), dim=-1)
    for method, args in (("sample", (points, directions, z, c)), ("sample_mixed", (points, directions, ws[0]))):
        a, b = (getattr(G, method)(*args, noise_mode="const") for G in (theirs, ours))
        for key in ("rgb", "sigma"):
            assert relative_error(b[key], a[key]) <= 1e-9, (method, key)
    # The discriminator's minibatch-std groups over a batch of 8 (EG3D strides them: i % (N / 4)).
    images = {"image": torch.randn(8, 3, 128, 128, dtype=torch.float64),
              "image_raw": torch.randn(8, 3, 64, 64, dtype=torch.float64)}
    labels = cameras(8, torch.float64)
    D_ours = load_network_pkl(path)["D"].double()
    assert relative_error(D_ours(images, labels), networks["D"].double()(images, labels)) <= 1e-9
    # Files written under numpy 1.x name numpy's scalar reconstructor numpy.core.multiarray.scalar.
    buffer = io.BytesIO()
    local.dump_snapshot(networks, buffer, legacy_numpy=True)
    assert b"numpy.core.multiarray" in buffer.getvalue()
    assert torch.equal(load_network_pkl(io.BytesIO(buffer.getvalue()))["G_ema"].backbone.mapping.w_avg,
                       networks["G_ema"].backbone.mapping.w_avg.float())
    out = ours.synthesis(ws[1], c, neural_rendering_resolution=8, noise_mode="const")
    assert set(out) == {"image", "image_raw", "image_depth"} and ours.neural_rendering_resolution == 8
    assert ours.rendering_kwargs["superresolution_module"].endswith("SuperresolutionHybrid2X")


def _pickle_with(obj):
    buffer = io.BytesIO()
    pickle.dump(obj, buffer)
    return buffer.getvalue()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_the_loader_runs_no_code_from_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _pickle_with({"G": _RunsCode()})
    with pytest.raises(PickleError, match="system, which omnifast does not load"):
        load_network_pkl(io.BytesIO(data))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(PickleError, match="builtins.eval"):
        load_network_pkl(io.BytesIO(_pickle_with({"G": eval})))


def test_foreign_layouts_are_one_line_errors_naming_what_differs(snapshot_128, tmp_path):
    _, networks, _ = snapshot_128
    with pytest.raises(PickleError, match="expected EG3D's snapshot dict"):
        load_network_pkl(io.BytesIO(_pickle_with([1, 2])))
    with pytest.raises(PickleError, match="no such file"):
        load_network_pkl(tmp_path / "missing.pkl")
    with pytest.raises(PickleError, match="not a readable network pickle"):
        load_network_pkl(io.BytesIO(b"\x80\x04garbage"))
    # A tensor of another shape, and one missing, named with its network.
    G = networks["G_ema"]
    weight = G.decoder.net[0].weight
    original = weight.data
    try:
        weight.data = torch.zeros(weight.shape[0], weight.shape[1] + 1)
        buffer = io.BytesIO()
        local.dump_snapshot({**networks, "G_ema": G}, buffer)
        with pytest.raises(PickleError, match=r"\['G_ema'\].*decoder\.net\.0\.weight has shape"):
            load_network_pkl(io.BytesIO(buffer.getvalue()))
    finally:
        weight.data = original


def test_import_pkl_then_generate(snapshot_128, tmp_path):
    resolution, networks, path = snapshot_128
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "imported"
    cmd = [sys.executable, "-m", "omnifast"]
    out = subprocess.run(cmd + ["import-pkl", str(path), "--out", str(run)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["networks"] == {"G": "TriPlaneGenerator", "D": "DualDiscriminator",
                                                  "G_ema": "TriPlaneGenerator"}
    grid = tmp_path / "grid.png"
    out = subprocess.run(cmd + ["generate", str(run), "--seeds", "0-1", "--sweep", "yaw", "--frames", "2",
                                "--out", str(grid), "--device", "cpu", "--extras"], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    import imageio.v3 as iio
    assert iio.imread(grid).shape == (2 * resolution, 2 * resolution, 3)
    assert (tmp_path / "grid_depth.png").exists()
    # The same images as the network's own: seed 0, front camera, psi 1.
    G = load_network_pkl(path)["G_ema"]
    from omnifast.gan.generate import load_generator
    generator = load_generator(str(run))
    labels = generator.labels(torch.zeros(1, 0))
    z = torch.randn(512, generator=torch.Generator().manual_seed(0))[None]
    torch.manual_seed(0)
    expected = G.synthesis(G.mapping(z, labels), labels, noise_mode="const")["image"]
    assert torch.equal(generator.synthesize([0], labels)["image"], expected)
    for flags, message in ((["--sweep", "jaw"], "no FLAME controls"), (["--params", "jaw=0.1"], "no FLAME"),
                           (["--mesh", str(tmp_path / "m.ply")], "--mesh")):
        out = subprocess.run(cmd + ["generate", str(run), "--out", str(grid), "--device", "cpu", *flags],
                             capture_output=True, text=True, env=env)
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, (flags, out.stderr)
    out = subprocess.run(cmd + ["import-pkl", str(path), "--out", str(run)], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "already holds" in out.stderr


def test_a_pickle_cannot_patch_omnifast_or_torch_or_explode(snapshot_128):
    _, _, path = snapshot_128
    from omnifast.gan import pickles

    # BUILD on what the unpickler hands out: omnifast's record class, a torch function.
    for target in (b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n", b"ctorch._utils\n_rebuild_tensor_v2\n"):
        data = (b"\x80\x02" + target + b"N}X\x08\x00\x00\x00__init__cbuiltins\nset\nsX\x0c\x00\x00\x00__defaults__N"
                b"s\x86b0}.")
        with pytest.raises(PickleError, match="snapshot dict"):
            load_network_pkl(io.BytesIO(data))
    assert pickles.Persistent.__init__ is not set and torch._utils._rebuild_tensor_v2.__defaults__ is not None
    assert load_network_pkl(path)["G_ema"] is not None  # still loads
    # Shared settings nested 60 deep (2^60 paths): refused at once, not walked.
    nested = {}
    for _ in range(60):
        nested = {"a": nested, "b": nested}
    with pytest.raises(PickleError, match="nested"):
        load_network_pkl(io.BytesIO(_pickle_with({"G": None, "training_set_kwargs": nested})))
    # A torch.save checkpoint is named as one.
    torch.save({"G": torch.zeros(1)}, str(path) + ".pt")
    with pytest.raises(PickleError, match="torch.save"):
        load_network_pkl(str(path) + ".pt")
