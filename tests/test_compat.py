"""omnifast.eg3d.patch() on local copies of EG3D's and OmniAvatar's released renderer modules:
whole coarse + importance + fine renders through the patched classes agree with the unpatched
ones, forward and backward, on every ray-marching path; bad arguments are refused clearly."""
import itertools
import math
import os
import types

import pytest
import torch

import omnifast.eg3d

HERE = os.path.dirname(__file__)
_copies = itertools.count()


def fresh(name, dtype=torch.float32):
    """A new copy of a local renderer module: patch() changes its classes for good. The released
    code pins float32 in a few places (the sampling grid, the importance weights); a float64 copy
    pins float64 there instead, so the whole unpatched render runs in float64."""
    path = os.path.join(HERE, f"{name}.py")
    with open(path) as f:
        source = f.read()
    if dtype == torch.float64:
        source = source.replace(".float()", ".double()").replace("torch.float32", "torch.float64")
    module = types.ModuleType(f"{name}_{next(_copies)}")
    module.__file__ = path
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def camera_rays(batch, side):
    """Rays of `side` x `side` pixels from cameras 2.7 from the origin (EG3D's FFHQ setup)."""
    t = (torch.arange(side) + 0.5) / side * 2 - 1
    v, u = torch.meshgrid(t, t, indexing="ij")
    dirs = torch.nn.functional.normalize(torch.stack([u * 0.12, v * 0.12, -torch.ones_like(u)], -1), dim=-1)
    angles = torch.rand(batch) * 0.6 - 0.3
    rot = torch.stack([torch.stack([angles.cos(), torch.zeros(batch), angles.sin()], -1),
                       torch.tensor([0.0, 1.0, 0.0]).expand(batch, 3),
                       torch.stack([-angles.sin(), torch.zeros(batch), angles.cos()], -1)], 1)
    directions = dirs.reshape(1, -1, 3) @ rot.transpose(1, 2)
    origins = (torch.tensor([0.0, 0.0, 2.7]) @ rot.transpose(1, 2)).reshape(batch, 1, 3).expand_as(directions)
    return origins.contiguous(), directions.contiguous()


class Decoder(torch.nn.Module):
    """EG3D's OSGDecoder (plane mean, FC 64, softplus, FC 1 + C, clamped sigmoid features) and,
    with pose features, OmniAvatar's (the last 106 FLAME numbers through FC + softplus)."""

    def __init__(self, channels, poses=0):
        super().__init__()
        self.pose = torch.nn.Sequential(torch.nn.Linear(poses, channels), torch.nn.Softplus()) if poses else None
        width = channels * (2 if poses else 1)
        self.net = torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.Softplus(), torch.nn.Linear(64, 1 + channels))

    def forward(self, sampled_features, extra):
        x = sampled_features.mean(1)
        n, m, c = x.shape
        x = x.reshape(n * m, c)
        if self.pose is not None:
            x = torch.cat([x, self.pose(extra[:, :1, -106:].reshape(n, 106)).repeat_interleave(m, 0)], -1)
        x = self.net(x).view(n, m, -1)
        return {"rgb": torch.sigmoid(x[..., 1:]) * 1.002 - 0.001, "sigma": x[..., :1]}


class SemanticSDF(torch.nn.Module):
    """A stand-in for OmniAvatar's frozen IGRModel: (s, x_bar) of a sphere that the expression
    numbers dent, called as the renderer calls it."""

    def __init__(self):
        super().__init__()
        self.radius = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, query):
        p, features = query["points"], query["features"]
        s = p.norm(dim=-1, keepdim=True) - self.radius - 0.02 * features[..., 100:101]
        canonical = 0.9 * p + 0.03 * torch.sin(4 * p)
        return torch.cat([s, canonical], -1), None, None


def run(renderer_call, seed, inputs):
    torch.manual_seed(seed)
    outputs = [t for t in renderer_call() if isinstance(t, torch.Tensor)]
    torch.manual_seed(seed + 1)
    upstream = [torch.randn_like(t) for t in outputs]
    loss = sum((t * g).sum() for t, g in zip(outputs, upstream))
    return outputs, torch.autograd.grad(loss, inputs)


def assert_same(before, after, tol):
    """Outputs and gradients agree to `tol` relative to each tensor's largest entry (float32
    sums over every sample and ray, accumulated in other orders)."""
    for a, b in zip(before[0] + list(before[1]), after[0] + list(after[1])):
        scale = float(a.abs().max())
        assert float((a - b).abs().max()) <= tol * max(scale, 1.0), (float((a - b).abs().max()), scale)


@pytest.mark.parametrize("auto_bounds", [False, True])
def test_patch_eg3d_renderer_whole_render(auto_bounds):
    module = fresh("eg3d_local")
    planes = (torch.randn(2, 3, 8, 32, 32) * 2).requires_grad_()
    decoder = Decoder(8)
    origins, directions = camera_rays(2, 12)
    options = {"ray_start": "auto" if auto_bounds else 2.25, "ray_end": "auto" if auto_bounds else 3.3,
               "box_warp": 1.0, "depth_resolution": 16, "depth_resolution_importance": 16,
               "clamp_mode": "softplus", "disparity_space_sampling": False}
    renderer = module.ImportanceRenderer()  # built before the patch, as an unpickled generator's is
    inputs = (planes, *decoder.parameters())
    call = lambda: renderer(planes, decoder, origins, directions, options)  # noqa: E731
    before = run(call, 0, inputs)
    replaced = omnifast.eg3d.patch(module)
    assert replaced == ["sample_from_planes", "MipRayMarcher2.run_forward",
                        "ImportanceRenderer.sample_importance", "ImportanceRenderer.unify_samples"]
    assert module.MipRayMarcher2.run_forward is omnifast.eg3d.eg3d_run_forward
    assert_same(before, run(call, 0, inputs), 2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", ["midpoint", "absorption", "force_background", "absorption+white_back"])
def test_patch_omniavatar_renderer_whole_render(path, dtype):
    """The same images and gradients from OmniAvatar's generator renderer before and after the
    patch: to float64's rounding, and in float32 to its. (It raised AttributeError
    ('MipRayMarcher2' object has no attribute '_march') on every path once: the methods put on
    OmniAvatar's class called a helper only omnifast's class had.)"""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the decoder, the stand-in SDF, the rays and the depths
    try:
        _omniavatar_whole_render(path, dtype)
    finally:
        torch.set_default_dtype(previous)


def _omniavatar_whole_render(path, dtype):
    module = fresh("omniavatar_local", dtype)
    depth = 3
    vol_planes = (torch.randn(2, 3, 8 * depth, 24, 24) * 2).requires_grad_()
    bi_planes = torch.zeros(2, 0, 8, 24, 24)
    decoder = Decoder(8, poses=106)
    features_3dmm = torch.randn(2, 206)
    origins, directions = camera_rays(2, 10)
    options = {"ray_start": 2.25, "ray_end": 3.3, "box_warp": 1.0, "triplane_depth": depth,
               "depth_resolution": 16, "depth_resolution_importance": 16, "clamp_mode": "softplus",
               "disparity_space_sampling": False, "absorption": "absorption" in path,
               "force_background": path == "force_background", "white_back": "white_back" in path}
    renderer = module.ImportanceRenderer({"with_sdf": False, "delta_geom": True, "im3dmm": SemanticSDF()})
    renderer.sigmoid_beta.data.fill_(0.02)  # a learnt beta, soft enough for smooth gradients
    inputs = (vol_planes, renderer.sigmoid_beta, *decoder.parameters())
    call = lambda: renderer(vol_planes, bi_planes, decoder, origins, directions, options,  # noqa: E731
                            features_3dmm=features_3dmm)
    before = run(call, 0, inputs)
    assert before[0][0].abs().sum() > 0 and math.isfinite(float(before[0][1].sum()))
    replaced = omnifast.eg3d.patch(module)
    assert replaced == ["sample_from_volplanes", "MipRayMarcher2.run_forward",
                        "MipRayMarcher2.run_forward_absorption", "ImportanceRenderer.sample_importance",
                        "ImportanceRenderer.unify_samples"]
    assert before[0][0].dtype == dtype
    # float32 to 1e-3: the learnt beta's gradient sums every sample's density gradient times 1 / beta^2.
    assert_same(before, run(call, 0, inputs), 1e-9 if dtype == torch.float64 else 1e-3)


def test_patch_rejects_what_is_not_a_renderer_module():
    with pytest.raises(TypeError, match="patch: module must be an imported renderer module .* got int"):
        omnifast.eg3d.patch(42)
    with pytest.raises(ValueError, match="must be an EG3D or OmniAvatar renderer module .* 'math' with none"):
        omnifast.eg3d.patch(math)
    empty = types.ModuleType("renderer")
    with pytest.raises(ValueError, match="'renderer' with none"):
        omnifast.eg3d.patch(empty)


def test_sample_from_volplanes_rejects_bad_depth():
    for depth in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="triplane_depth must be a positive integer"):
            omnifast.eg3d.sample_from_volplanes(torch.randn(1, 3, 8, 4, 4), torch.rand(1, 5, 3),
                                                box_warp=1, triplane_depth=depth)
