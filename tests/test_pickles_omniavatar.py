"""OmniAvatar's released network through omnifast's importer: a local re-implementation of its
generator (tests/omniavatar_networks_local.py: the warp and template networks, the tri-grid
volumes, the pose-embedded decoder, the density prior, background and torgb; random weights)
pickled in the persistence format is read by ``omnifast.gan.load_network_pkl`` without running
code, and omnifast's generator gives the same images, raw images, depth and masks in float64."""
import io
import json
import os
import subprocess
import sys

import omniavatar_networks_local as local
import pytest
import torch

from omnifast.gan import load_network_pkl
from omnifast.gan.omniavatar import OmniAvatarGenerator
from omnifast.gan.pickles import PickleError, load_imported

VARIANTS = {
    # background network and torgb, the prior's density added, pose noise off
    "background": dict(),
    # no background nor torgb, sin/cos pose embedding, pose noise drawn and used, OmniAvatar's
    # deterministic depths, the prior not added (delta_geom False), volumes of depth 1
    "plain": dict(background=False, torgb=False, pose_embed=True, pose_noise=0.3, det_sampling=True,
                  delta_geom=False, triplane_depth=1),
}


def snapshot(variant, seed=0):
    networks = local.build_networks(seed=seed, **VARIANTS[variant])
    buffer = io.BytesIO()
    local.dump_snapshot(networks, buffer)
    return networks, buffer.getvalue()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return (request.param, *snapshot(request.param))


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_every_tensor_keeps_its_name_and_shape(variant):
    _, networks, data = variant
    loaded = load_network_pkl(io.BytesIO(data))
    assert isinstance(loaded["G_ema"], OmniAvatarGenerator) and isinstance(loaded["G"], OmniAvatarGenerator)
    for key in ("G", "D", "G_ema"):
        theirs, ours = networks[key].state_dict(), loaded[key].state_dict()
        assert sorted(theirs) == sorted(ours), key
        for name, value in theirs.items():
            torch.testing.assert_close(ours[name], value.float(), rtol=0, atol=0, msg=name)
    # the template network is one module under two names, as in OmniAvatar's renderer
    G = loaded["G_ema"]
    assert G.renderer.template_sdf is G.renderer.im3dmm._template_sdf
    assert any(name.startswith("renderer.im3dmm._template_sdf.") for name in G.state_dict())


# neural rendering at the 2X module's input size (its in-place raw image) and resized to it
@pytest.mark.parametrize("dtype, tolerance, neural", [(torch.float64, 1e-6, 64), (torch.float64, 1e-6, 32),
                                                      (torch.float32, 2e-3, 64)])
def test_the_imported_generator_gives_omniavatar_s_outputs(variant, dtype, tolerance, neural):
    name, networks, data = variant
    loaded = load_network_pkl(io.BytesIO(data))
    theirs, ours = networks["G_ema"].to(dtype), loaded["G_ema"].to(dtype)
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(3)).to(dtype)
    c = local.labels(2, seed=1, dtype=dtype)
    results = []
    for G in (theirs, ours):
        torch.manual_seed(7)  # the same depth, pose-noise and importance draws on both sides
        results.append(G(z, c, truncation_psi=0.7, truncation_cutoff=10, neural_rendering_resolution=neural,
                         noise_mode="const"))
    assert set(results[1]) == {"image", "image_raw", "image_depth", "image_mask"}
    for key in results[0]:
        assert results[1][key].shape == results[0][key].shape and results[1][key].dtype == dtype, key
        assert relative_error(results[1][key], results[0][key]) <= tolerance, (name, key)
    # the warp matters: other FLAME parameters give another image
    c2 = c.clone()
    c2[:, 25:] = 0
    torch.manual_seed(7)
    other = ours(z, c2, truncation_psi=0.7, truncation_cutoff=10, neural_rendering_resolution=neural,
                 noise_mode="const")
    assert relative_error(other["image_raw"], results[1]["image_raw"]) > 1e-3
    # OmniAvatar's D reads the labels' first 25 numbers
    images = {"image": results[0]["image"], "image_raw": results[0]["image_raw"]}
    D_theirs, D_ours = networks["D"].to(dtype), loaded["D"].to(dtype)
    assert relative_error(D_ours(images, c), D_theirs(images, c[:, :25])) <= tolerance


def test_mapping_and_sampling_interface(variant):
    _, networks, data = variant
    theirs, ours = networks["G_ema"].double(), load_network_pkl(io.BytesIO(data))["G_ema"].double()
    z, c = torch.randn(2, 512, dtype=torch.float64), local.labels(2, seed=2)
    ws = [G.mapping(z, c, truncation_psi=0.5) for G in (theirs, ours)]
    assert relative_error(ws[1], ws[0]) <= 1e-12
    points = (torch.rand(2, 50, 3, dtype=torch.float64) - 0.5) * 0.9
    directions = torch.nn.functional.normalize(torch.randn(2, 50, 3, dtype=torch.float64), dim=-1)
    for features in (None, c[:, 25:]):
        outputs = []
        for G in (theirs, ours):
            torch.manual_seed(3)
            outputs.append(G.sample_mixed(points, directions, ws[0], features_3dmm=features, noise_mode="const"))
        for key in ("rgb", "sigma"):
            assert relative_error(outputs[1][key], outputs[0][key]) <= 1e-9, key
    torch.manual_seed(3)
    sampled = ours.sample(points, directions, z, c, truncation_psi=0.5, noise_mode="const")
    torch.manual_seed(3)
    mixed = ours.sample_mixed(points, directions, ws[1], features_3dmm=c[:, 25:], noise_mode="const")
    assert torch.equal(sampled["sigma"], mixed["sigma"])


def test_unsupported_settings_are_one_line_errors():
    networks = local.build_networks()
    for key, value, message in (("with_sdf", True, "with_sdf must be False"),
                                ("ray_start", "auto", "ray_start and ray_end must be numbers"),
                                ("triplane_depth", 0, "triplane_depth must be an integer")):
        G = networks["G_ema"]
        saved = G.rendering_kwargs[key]
        G._init_kwargs["rendering_kwargs"][key] = value
        try:
            buffer = io.BytesIO()
            local.dump_snapshot({**networks, "G_ema": G}, buffer)
            with pytest.raises(PickleError, match=message) as error:
                load_network_pkl(io.BytesIO(buffer.getvalue()))
            assert "\n" not in str(error.value) and "['G_ema']" in str(error.value)
        finally:
            G._init_kwargs["rendering_kwargs"][key] = saved


def test_import_pkl_keeps_the_generator_and_the_discriminator_s_label(tmp_path):
    networks, data = snapshot("background", seed=1)
    path = tmp_path / "omniavatar.pkl"
    path.write_bytes(data)
    run = tmp_path / "imported"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "omnifast", "import-pkl", str(path), "--out", str(run)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["networks"] == {"G": "OmniAvatarGenerator", "D": "DualDiscriminator",
                                                  "G_ema": "OmniAvatarGenerator"}
    G, D = load_imported(run), load_imported(run, "D")
    expected = load_network_pkl(path)
    z, c = torch.randn(1, 512), local.labels(1, seed=4, dtype=torch.float32)
    images = []
    for generator in (G, expected["G_ema"]):
        torch.manual_seed(0)
        images.append(generator(z, c, neural_rendering_resolution=16, noise_mode="const"))
    assert torch.equal(images[0]["image"], images[1]["image"])
    pair = {"image": images[0]["image"], "image_raw": images[0]["image_raw"]}
    assert torch.equal(D(pair, c), expected["D"](pair, c))
    # generate's path: EG3D's cameras, then zero FLAME parameters (the mean face)
    from omnifast.gan.generate import load_generator
    generator = load_generator(str(run))
    labels = generator.labels(torch.zeros(2, 0), yaw=0.3)
    assert labels.shape == (2, 25 + local.FLAME_DIM) and not labels[:, 25:].any()
    out = generator.synthesize([0, 1], labels)
    assert out["image"].shape == (2, 3, 128, 128) and torch.isfinite(out["image"]).all()
