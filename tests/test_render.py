"""The renderer of stage II: EG3D's cameras and rays, OmniAvatar's decoder and renderer (local
copies of the released code as the definition), the two backends against each other in float64
(values and gradients), gradcheck of a whole render, the frozen warp, and clear errors."""
import copy
import math

import pytest
import torch

from omnifast.flame import Flame
from omnifast.geometry import (
    camera_labels,
    camera_rays,
    ffhq_intrinsics,
    fov_to_intrinsics,
    orbit_cam2world,
    split_labels,
)
from omnifast.render import MeshWarp, OSGDecoder, RenderConfig, Renderer, SDFWarp, Warp, load_warp, world_scale_for
from omnifast.sdf.data import SDFSampler
from omnifast.sdf.network import NetworkConfig, SemanticSDF

import eg3d_local
import omniavatar_local

TINY_SDF = NetworkConfig(hidden=16, layers=2, skip=0, frequencies=2, condition=8)


@pytest.fixture(scope="module")
def flame(flame_dir):
    return Flame(flame_dir, n_shape=10, n_expr=10)


@pytest.fixture(scope="module")
def sdf_warp(flame):
    sampler = SDFSampler(flame, surface_points=16, space_points=16)
    torch.manual_seed(0)
    sdf = SemanticSDF(flame.layout.size, sampler.box_min, sampler.box_max, config=TINY_SDF).eval()
    return SDFWarp(flame, sdf, world_scale_for(float(sdf.scale), 1.0))


@pytest.fixture
def same_mlp_warp(sdf_warp):
    """W with PyTorch's softplus under both backends, for the float64 comparisons of the
    renderer's kernels: omnifast.softplus rounds W's float32 activations differently, and a
    difference of one rounding in the prior can move a sample."""
    sdf_warp.fast_softplus = False
    yield sdf_warp
    del sdf_warp.fast_softplus


@pytest.fixture(scope="module")
def mesh_warp(flame, sdf_warp):
    return MeshWarp(flame, sdf_warp.centre, sdf_warp.world_scale)


def pose_dim(flame):
    return flame.layout.size - flame.layout.n_shape


def scene(flame, resolution, batch=1, channels=8, depth=3, grid=16, dtype=torch.float64):
    """Tri-grid planes (``depth=None``: EG3D tri-planes), labels, parameters and rays."""
    spatial = (grid, grid) if depth is None else (depth, grid, grid)
    planes = (torch.randn(batch, 3, channels, *spatial, dtype=dtype) * 2).requires_grad_(True)
    cam2world = orbit_cam2world(math.pi / 2, math.pi / 2, yaw_std=0.3, pitch_std=0.1, batch=batch, dtype=dtype)
    params = torch.randn(batch, flame.layout.size, dtype=dtype) * 0.3
    labels = camera_labels(cam2world, ffhq_intrinsics(dtype=dtype))
    origins, directions = camera_rays(cam2world, ffhq_intrinsics(dtype=dtype).expand(batch, 3, 3), resolution)
    return planes, torch.cat([labels, params], -1), params, origins, directions


def renderer_for(warp, dtype=torch.float64, beta=0.02, **config):
    renderer = Renderer(warp, RenderConfig(**config))
    renderer.sigmoid_beta = torch.nn.Parameter(torch.full((1,), beta, dtype=dtype))
    return renderer


# ---- cameras and rays

def test_rays_equal_eg3d_ray_sampler():
    cam2world = orbit_cam2world(1.3, 1.7, yaw_std=0.2, pitch_std=0.2, batch=3)
    intrinsics = ffhq_intrinsics().expand(3, 3, 3).clone()
    intrinsics[1, 0, 1] = 0.05  # skew
    intrinsics[2, :2, 2] = torch.tensor([0.47, 0.53])
    for resolution in (1, 7, 16):
        ours = camera_rays(cam2world, intrinsics, resolution)
        theirs = eg3d_local.RaySampler()(cam2world, intrinsics, resolution)
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    ours = camera_rays(cam2world.double(), intrinsics.double(), 8)
    theirs = eg3d_local.RaySampler()(cam2world.double(), intrinsics.double(), 8)
    torch.testing.assert_close(ours[1], theirs[1].double(), rtol=0, atol=1e-7)


def test_camera_samplers_equal_eg3d():
    pivot = torch.tensor([0.0, 0.05, 0.2])
    torch.manual_seed(3)
    theirs = eg3d_local.LookAtPoseSampler.sample(1.2, 1.4, pivot, 0.3, 0.15, radius=2.7, batch_size=5)
    torch.manual_seed(3)
    ours = orbit_cam2world(1.2, 1.4, 2.7, pivot.tolist(), yaw_std=0.3, pitch_std=0.15, batch=5)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # equal values (zeros may differ in sign)
    assert torch.equal(fov_to_intrinsics(18.837), eg3d_local.FOV_to_intrinsics(18.837))
    assert abs(float(fov_to_intrinsics(18.837)[0, 0]) - 4.2634) < 1e-3
    frontal = orbit_cam2world(math.pi / 2, math.pi / 2, 2.7)[0]
    torch.testing.assert_close(frontal[:3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-6, rtol=0)
    torch.testing.assert_close(frontal[:3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)  # looks at -z


def test_labels_round_trip_and_reject_short_vectors():
    cam2world = orbit_cam2world(1.0, 1.5, batch=2)
    labels = camera_labels(cam2world, ffhq_intrinsics())
    assert labels.shape == (2, 25)
    c, k, rest = split_labels(torch.cat([labels, torch.ones(2, 4)], -1))
    assert torch.equal(c, cam2world) and torch.equal(k[1], ffhq_intrinsics()) and rest.shape == (2, 4)
    with pytest.raises(ValueError, match=r"labels must be \[B, 25 \+ K\].*\[2, 24\]"):
        split_labels(labels[:, :24])


# ---- the decoder

@pytest.mark.parametrize("activation", ["sigmoid", "lrelu", "none"])
@pytest.mark.parametrize("pose_embed", [False, True])
def test_decoder_equals_omniavatar(flame, activation, pose_embed):
    P = pose_dim(flame)
    options = dict(decoder_lr_mul=0.5, decoder_output_dim=32, decoder_activation=activation, pose_embed=pose_embed)
    theirs = omniavatar_local.OSGDecoder(32, options, P).double()
    ours = OSGDecoder(32, pose_dim=P, activation=activation, lr_mul=0.5, pose_embed=pose_embed).double()
    with torch.no_grad():
        for mine, their in ((ours.pose_net, theirs.pose_net[0]), (ours.hidden, theirs.net[0]),
                            (ours.output, theirs.net[2])):
            their.weight.copy_(torch.randn_like(their.weight))
            their.bias.copy_(torch.randn_like(their.bias))
            mine.weight.copy_(their.weight)
            mine.bias.copy_(their.bias)
    features = torch.randn(2, 3, 50, 32, dtype=torch.float64)
    params = torch.randn(2, flame.layout.size, dtype=torch.float64)
    expected = theirs(features, params[:, None, :].expand(-1, 50, -1))
    colour, correction = ours(features.mean(1), params[:, -P:])
    torch.testing.assert_close(colour, expected["rgb"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(correction, expected["sigma"], rtol=1e-12, atol=1e-12)
    # Its own storage: a renderer keeping every chunk's correction keeps nothing else of the chunk.
    assert correction.untyped_storage().nbytes() == correction.numel() * correction.element_size()


def test_decoder_pose_noise_only_in_training(flame):
    P = pose_dim(flame)
    decoder = OSGDecoder(8, pose_dim=P, pose_noise=0.5)
    features, pose = torch.randn(1, 10, 8), torch.randn(1, P)
    decoder.eval()
    assert torch.equal(decoder(features, pose)[0], decoder(features, pose)[0])
    decoder.train()
    assert not torch.equal(decoder(features, pose)[0], decoder(features, pose)[0])
    with pytest.raises(ValueError, match=rf"pose must be \[N, {P}\]"):
        decoder(features, pose[:, :-1])
    with pytest.raises(ValueError, match="activation must be one of"):
        OSGDecoder(activation="relu")


# ---- the renderer against OmniAvatar's released path

class _Im3dmm(torch.nn.Module):
    """Our warp behind OmniAvatar's query interface: ``(x = [s, x_bar], inside, hidden)``."""

    def __init__(self, warp):
        super().__init__()
        self.warp = warp

    def forward(self, query):
        prior, canonical = self.warp(query["points"], query["features"][:, 0])
        return torch.cat([prior.unsqueeze(-1), canonical], -1), None, None


def _omniavatar_render(warp, decoder, renderer, planes, params, origins, directions, mode):
    c = renderer.config
    theirs = omniavatar_local.ImportanceRenderer({"with_sdf": False, "delta_geom": True, "im3dmm": _Im3dmm(warp)})
    theirs.sigmoid_beta = renderer.sigmoid_beta
    P = decoder.pose_dim

    def their_decoder(features, poses):
        colour, sigma = decoder(features.mean(1), poses[:, 0, -P:])
        return {"rgb": colour, "sigma": sigma}

    options = dict(ray_start=c.ray_start, ray_end=c.ray_end, box_warp=c.box_warp, depth_resolution=c.depth_resolution,
                   depth_resolution_importance=c.depth_resolution_importance, disparity_space_sampling=False,
                   clamp_mode="softplus", triplane_depth=planes.shape[3], absorption=mode == "absorption",
                   det_sampling=c.det_sampling)
    N, _, C, D, H, W = planes.shape
    rgb, depth, mask, *_ = theirs(planes.reshape(N, 3, C * D, H, W), None, their_decoder, origins, directions,
                                  options, features_3dmm=params)
    return (rgb + 1) / 2 if mode == "absorption" else rgb, depth, mask


@pytest.mark.parametrize("mode", ["midpoint", "absorption"])
def test_renderer_equals_omniavatar_deterministic(flame, sdf_warp, mode):
    # OmniAvatar's sampler casts the grid to float32, so the comparison runs in float32; the two
    # backends are compared in float64 below.
    planes, _, params, origins, directions = scene(flame, 6, batch=2, dtype=torch.float32)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame))
    renderer = renderer_for(sdf_warp, torch.float32, density="density_delta", mode=mode, det_sampling=True, depth_resolution=12,
                            depth_resolution_importance=10, chunk=40)
    ours = renderer.render_rays(planes, decoder, origins, directions, params)
    theirs = _omniavatar_render(sdf_warp, decoder, renderer, planes, params, origins, directions, mode)
    for a, b in zip((ours.features, ours.depth, ours.opacity), theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    loss = lambda out: out[0].square().sum() + out[1].sum() + out[2].sum()  # noqa: E731
    grads = [torch.autograd.grad(loss(o), [planes, *decoder.parameters(), renderer.sigmoid_beta])
             for o in ((ours.features, ours.depth, ours.opacity), theirs)]
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("backend", ["omnifast", "reference"])
def test_renderer_equals_omniavatar_with_the_same_random_draws(flame, sdf_warp, backend):
    planes, _, params, origins, directions = scene(flame, 8, dtype=torch.float32)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame))
    renderer = renderer_for(sdf_warp, torch.float32, density="density_delta", depth_resolution=16,
                            depth_resolution_importance=16)
    torch.manual_seed(11)
    ours = renderer.render_rays(planes, decoder, origins, directions, params, backend=backend)
    torch.manual_seed(11)
    theirs = _omniavatar_render(sdf_warp, decoder, renderer, planes, params, origins, directions, "midpoint")
    for a, b in zip((ours.features, ours.depth, ours.opacity), theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---- the two backends

@pytest.mark.parametrize("density", ["sdf", "density_delta"])
@pytest.mark.parametrize("warp_kind", ["sdf", "mesh"])
def test_backends_agree_in_float64(flame, same_mlp_warp, mesh_warp, density, warp_kind):
    warp = same_mlp_warp if warp_kind == "sdf" else mesh_warp
    planes, labels, *_ = scene(flame, 5, batch=2)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame)).double()
    renderer = renderer_for(warp, density=density, depth_resolution=10, depth_resolution_importance=8, chunk=30)
    outs, grads = [], []
    # reference+checkpoint: EG3D's code path recomputed per chunk of rays (chunk=30: several)
    for backend in ("omnifast", "reference+checkpoint", "reference"):
        out = renderer(planes, decoder, labels, 5, backend=backend, generator=torch.Generator().manual_seed(4),
                       return_weights=True)
        weights = torch.linspace(1, 2, out.delta.shape[-1], dtype=torch.float64)
        loss = (out.features.square().sum() + out.depth.sum() + out.opacity.sum()
                + (out.delta * weights).square().sum())
        grads.append(torch.autograd.grad(loss, [planes, *decoder.parameters(), renderer.sigmoid_beta]))
        outs.append(out)
    *others, b = outs
    for a in others:
        for name in ("features", "depth", "opacity", "delta", "prior_sdf", "depths", "weights"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9, msg=name)
    a = outs[0]
    assert a.features.shape == (2, 32, 5, 5) and a.delta.shape == (2, 25, 18) and a.weights.shape == (2, 25, 17)
    assert torch.isfinite(a.features).all() and a.opacity.min() >= 0 and a.opacity.max() <= 1 + 1e-6  # (EG3D adds 1e-10 per interval)
    for other in grads[:-1]:
        for name, x, y in zip(["planes", *(n for n, _ in decoder.named_parameters()), "beta"], other, grads[-1]):
            assert x.abs().max() > 0, name
            torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-9, msg=name)


@pytest.mark.parametrize("backend", ["omnifast", "reference"])
def test_a_bad_image_does_not_spoil_the_others(flame, sdf_warp, backend):
    planes, labels, *_ = scene(flame, 4, batch=3)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame)).double()
    renderer = renderer_for(sdf_warp, depth_resolution=8, depth_resolution_importance=4)
    good = renderer(planes, decoder, labels, 4, backend=backend, generator=torch.Generator().manual_seed(1))
    nan_label = labels.clone()
    nan_label[1, 3] = float("nan")  # image 1's camera position: no camera, refused by name
    with pytest.raises(ValueError, match="labels: row 1 has a cam2world that is not finite"):
        renderer(planes, decoder, nan_label, 4, backend=backend)
    planes = planes.detach().clone()
    planes[1, 0, 0] = float("nan")  # image 1's planes
    bad = renderer(planes, decoder, labels, 4, backend=backend, generator=torch.Generator().manual_seed(1))
    assert not torch.isfinite(bad.depth[1]).all()
    for image in (0, 2):
        for name in ("features", "depth", "opacity"):
            assert torch.isfinite(getattr(bad, name)[image]).all(), (name, image)
            torch.testing.assert_close(getattr(bad, name)[image], getattr(good, name)[image], msg=name)


def test_backends_agree_on_eg3d_triplanes(flame, sdf_warp):
    planes, labels, *_ = scene(flame, 4, depth=None)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame)).double()
    renderer = renderer_for(sdf_warp, depth_resolution=8, depth_resolution_importance=6, chunk=20)
    outs = [renderer(planes, decoder, labels, 4, backend=b, generator=torch.Generator().manual_seed(2))
            for b in ("omnifast", "reference")]
    grads = [torch.autograd.grad(o.features.square().sum() + o.delta.sum(), planes)[0] for o in outs]
    torch.testing.assert_close(outs[0].features, outs[1].features, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-9)
    assert grads[0].abs().max() > 0



# ---- the proposal sampler

def image_errors(out, ref, world_scale):
    """PSNR (dB, features as images in [0, 1]), mean absolute depth error (mm) where both hit,
    and the IoU of the silhouettes (opacity > 0.5)."""
    mse = (out.features - ref.features).square().mean().item()
    mine, theirs = out.opacity > 0.5, ref.opacity > 0.5
    both = mine & theirs
    depth_mm = ((out.depth - ref.depth).abs()[both].mean() / world_scale * 1000).item()
    iou = ((mine & theirs).sum() / (mine | theirs).sum()).item()
    return 10 * math.log10(1 / max(mse, 1e-30)), depth_mm, iou


def surface_decoder(flame):
    """A decoder whose correction is nearly zero: the surface is the prior's."""
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame)).double()
    with torch.no_grad():
        decoder.output.weight[0].mul_(0.01)
        decoder.output.bias[0].zero_()
    return decoder


def test_proposal_converges_to_the_dense_render(flame, mesh_warp):
    torch.manual_seed(5)
    planes, labels, *_ = scene(flame, 4, batch=2)
    decoder = surface_decoder(flame)
    dense = renderer_for(mesh_warp, beta=0.002, depth_resolution=96, depth_resolution_importance=96,
                         det_sampling=True)(planes, decoder, labels, 32)
    errors = []
    for samples in (8, 24, 96):
        renderer = renderer_for(mesh_warp, beta=0.002, sampling="proposal", proposal_samples=samples,
                                det_sampling=True)
        out = renderer(planes, decoder, labels, 32)
        assert out.depths.shape == (2, 32 * 32, samples) and (out.depths.diff(dim=-1) >= 0).all()
        errors.append(image_errors(out, dense, mesh_warp.world_scale))
    (psnr8, depth8, _), (psnr24, depth24, iou24), (psnr96, depth96, iou96) = errors
    assert (dense.opacity > 0.5).float().mean() > 0.2  # the head fills the frame's middle
    assert psnr8 < psnr24 < psnr96 and depth8 > depth24 > depth96, errors
    assert psnr96 > 40 and depth96 < 0.4 and iou96 > 0.995, errors
    assert psnr24 > 32 and depth24 < 3 and iou24 > 0.985, errors


def test_proposal_backends_agree_and_the_probe_costs_no_gradients(flame, same_mlp_warp):
    planes, labels, *_ = scene(flame, 6, batch=2)
    decoder = surface_decoder(flame)
    renderer = renderer_for(same_mlp_warp, beta=0.01, sampling="proposal", proposal_samples=6, probe_stride=2,
                            depth_resolution=8, depth_resolution_importance=8, chunk=50)
    outs, grads = [], []
    for backend in ("omnifast", "reference"):
        out = renderer(planes, decoder, labels, 6, backend=backend, generator=torch.Generator().manual_seed(3))
        grads.append(torch.autograd.grad(out.features.square().sum() + out.delta.sum(), planes)[0])
        outs.append(out)
    for name in ("features", "depth", "opacity", "delta", "depths"):
        torch.testing.assert_close(getattr(outs[0], name), getattr(outs[1], name), rtol=1e-9, atol=1e-9, msg=name)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-9)
    # The probe keeps nothing for the backward: the render saves what shading its final samples
    # alone saves, and gives the same gradient.
    cam2world, intrinsics, params = renderer.split_labels(labels)
    origins, directions = camera_rays(cam2world, intrinsics, 6)

    def bytes_saved(fn):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        return sum(total), out
    full, out = bytes_saved(lambda: renderer(planes, decoder, labels, 6, backend="reference",
                                             generator=torch.Generator().manual_seed(3)))
    depths = renderer.proposal_depths(planes, decoder, cam2world, intrinsics, params, 6, backend="reference",
                                      generator=torch.Generator().manual_seed(3))
    assert not depths.requires_grad and depths.shape == (2, 36, 6, 1)
    final, given = bytes_saved(lambda: renderer.render_rays(planes, decoder, origins, directions, params,
                                                            backend="reference", depths=depths))
    assert full == final > 0
    grad = torch.autograd.grad(given.features.square().sum() + given.delta.sum(), planes)[0]
    torch.testing.assert_close(grad, grads[1], rtol=1e-12, atol=1e-12)


class SphereWarp(Warp):
    """A prior the tests know exactly: a sphere of radius ``radius`` metres about the centre,
    the identity correspondence."""

    def __init__(self, flame, centre, world_scale, radius):
        super().__init__(flame, centre, world_scale)
        self.radius = radius

    def flame_space(self, x, params, backend):
        return (x - self.centre.to(x.dtype)).norm(dim=-1) - self.radius, x


class ShellDecoder(torch.nn.Module):
    """Reads world points from :func:`coordinate_planes` and corrects the sphere prior with a
    shell ``inner``-``outer`` world units from the centre, outside the prior's surface (hair
    the prior does not know); the colour marks which surface a ray sees."""
    pose_dim = 0

    def __init__(self, radius, inner, outer):
        super().__init__()
        self.radius, self.inner, self.outer = radius, inner, outer

    def pose_bias(self, pose):
        return None

    def decode(self, points, bias):
        r = points.norm(dim=-1, keepdim=True)
        shell = (r - (self.inner + self.outer) / 2).abs() - (self.outer - self.inner) / 2
        delta = torch.clamp_max(shell - (r - self.radius), 0)
        colour = torch.cat([(r - self.radius).clamp(0, 1) * 3, (points + 0.5).clamp(0, 1)], -1)
        return colour, delta


def coordinate_planes(size, box=1.0, dtype=torch.float64):
    """EG3D tri-planes whose mean is the sampled point itself (linear ramps through the texel
    centres: bilinear interpolation is exact inside them)."""
    ramp = ((torch.arange(size, dtype=dtype) * 2 + 1) / size - 1) * box / 2
    planes = torch.zeros(1, 3, 3, size, size, dtype=dtype)
    planes[0, 0, 0] = 3 * ramp[None, :]  # plane (x, y): x along the width
    planes[0, 0, 1] = 3 * ramp[:, None]  # y along the height
    planes[0, 1, 2] = 3 * ramp[:, None]  # plane (x, z): z along the height
    return planes


def test_proposal_keeps_a_thin_shell_the_prior_does_not_know(flame, sdf_warp):
    from omnifast import triplane_sample

    scale = sdf_warp.world_scale
    warp = SphereWarp(flame, sdf_warp.centre, scale, radius=0.09)
    decoder = ShellDecoder(0.09 * scale, 0.115 * scale, 0.125 * scale)  # a 1 cm shell 2.5 cm out
    planes = coordinate_planes(64)
    points = torch.rand(1, 100, 3, dtype=torch.float64) * 0.8 - 0.4
    torch.testing.assert_close(triplane_sample(planes, points, reduce="mean"), points, rtol=0, atol=1e-12)
    cam2world = orbit_cam2world(math.pi / 2 + 0.4, math.pi / 2 - 0.2, batch=1, dtype=torch.float64)
    labels = torch.cat([camera_labels(cam2world, ffhq_intrinsics(dtype=torch.float64)),
                        torch.zeros(1, flame.layout.size, dtype=torch.float64)], -1)
    dense = renderer_for(warp, beta=0.001, depth_resolution=96, depth_resolution_importance=96,
                         det_sampling=True)(planes, decoder, labels, 64)
    out = renderer_for(warp, beta=0.001, sampling="proposal")(planes, decoder, labels, 64,
                                                              generator=torch.Generator().manual_seed(0))
    on_shell = (dense.opacity > 0.5) & (dense.features[:, :1] > 0.1)  # the shell, not the sphere, in front
    assert on_shell.float().mean() > 0.1
    psnr, depth_mm, iou = image_errors(out, dense, scale)
    assert psnr > 35 and depth_mm < 1 and iou > 0.99, (psnr, depth_mm, iou)
    assert ((out.features[:, :1] > 0.1) & on_shell).sum() >= 0.99 * on_shell.sum()

@pytest.mark.parametrize("backend", ["omnifast", "reference"])
@pytest.mark.parametrize("density", ["sdf", "density_delta"])
def test_gradcheck_whole_render(flame, sdf_warp, backend, density):
    # The fine depths come from weights under no_grad (as in EG3D): a gradient through them does
    # not exist, so gradcheck runs the coarse pass only; the fine pass is checked above.
    planes, _, params, origins, directions = scene(flame, 2, channels=4, depth=2, grid=4)
    decoder = OSGDecoder(4, pose_dim=pose_dim(flame), hidden=8, out_features=3).double()
    renderer = renderer_for(sdf_warp, beta=0.05, density=density, depth_resolution=6, depth_resolution_importance=0,
                            det_sampling=True, chunk=6)
    weight = decoder.output.weight

    def render(planes, beta, weight):
        renderer.sigmoid_beta = beta
        decoder.output.weight = weight
        out = renderer.render_rays(planes, decoder, origins, directions, params, backend=backend)
        return out.features, out.depth, out.opacity, out.delta

    beta = torch.nn.Parameter(torch.full((1,), 0.05, dtype=torch.float64))
    assert torch.autograd.gradcheck(render, (planes, beta, weight), eps=1e-6, atol=1e-5)


def test_no_gradient_reaches_the_warp(flame, sdf_warp):
    planes, labels, *_ = scene(flame, 4)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame)).double()
    renderer = renderer_for(sdf_warp, depth_resolution=6, depth_resolution_importance=4)
    assert not any(p.requires_grad for p in renderer.warp.parameters())
    for p in sdf_warp.sdf.parameters():
        p.requires_grad_(True)  # even a warp left trainable by its owner stays frozen here
    try:
        out = renderer(planes, decoder, labels, 4)
        (out.features.sum() + out.delta.sum()).backward()
        assert all(p.grad is None for p in sdf_warp.sdf.parameters())
        assert planes.grad is not None and renderer.sigmoid_beta.grad is not None
    finally:
        for p in sdf_warp.sdf.parameters():
            p.requires_grad_(False)


def test_a_beta_pushed_through_zero_renders_its_magnitude_and_keeps_its_gradient(flame, sdf_warp):
    # An optimiser's step can take the learnable beta below zero: the render is that of |beta|
    # (a sharp surface, not the 1e-6 floor's), and beta's gradient still flows back.
    planes, labels, *_ = scene(flame, 4)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame)).double()
    outs = {}
    for beta in (0.004, -0.004):
        renderer = renderer_for(sdf_warp, beta=beta, depth_resolution=6, depth_resolution_importance=4,
                                det_sampling=True)
        out = renderer(planes, decoder, labels, 4)
        out.features.sum().backward()
        outs[beta] = out.features.detach(), renderer.sigmoid_beta.grad
    (positive, grad_positive), (negative, grad_negative) = outs[0.004], outs[-0.004]
    torch.testing.assert_close(negative, positive, rtol=1e-12, atol=1e-12)
    assert grad_positive.abs() > 0
    torch.testing.assert_close(grad_negative, -grad_positive, rtol=1e-9, atol=0)


def test_sdf_gradient_is_the_final_sdfs_gradient_and_backends_agree(flame, sdf_warp):
    # W in float64 here, so that finite differences of s + delta s are exact enough to compare.
    warp = SDFWarp(flame, copy.deepcopy(sdf_warp.sdf).double(), sdf_warp.world_scale)
    planes, _, params, *_ = scene(flame, 2, batch=2)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame)).double()
    renderer = renderer_for(warp)
    points = (torch.rand(2, 20, 3, dtype=torch.float64) - 0.5) * 0.6  # inside W's box
    gradients, grads = [], []
    for backend in ("omnifast", "reference"):
        gradient = renderer.sdf_gradient(planes, decoder, points, params, backend=backend)
        eikonal = (gradient.norm(dim=-1) - 1).square().mean()
        grads.append(torch.autograd.grad(eikonal, [planes, *decoder.parameters()], allow_unused=True))
        gradients.append(gradient)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-9, atol=1e-10)
    names = ["planes", *(n for n, _ in decoder.named_parameters())]
    for name, x, y in zip(names, *grads):
        if name.startswith("output") and x is None:  # only the correction's row reaches the SDF
            continue
        assert x.abs().max() > 0, name
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10, msg=name)

    def final_sdf(p):
        _, delta, prior = renderer.sample(planes, decoder, p, params, backend="reference")
        return prior + delta[..., 0]
    eps = 1e-6
    for axis in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[axis] = eps
        finite = (final_sdf(points + step) - final_sdf(points - step)) / (2 * eps)
        torch.testing.assert_close(gradients[0][..., axis], finite.detach(), rtol=1e-5, atol=1e-6)
    assert not any(p.grad is not None for p in warp.parameters())
    with pytest.raises(ValueError, match="MeshWarp has no gradient with respect to the points"):
        renderer_for(MeshWarp(flame, sdf_warp.centre, sdf_warp.world_scale)).sdf_gradient(
            planes, decoder, points, params)


def test_mesh_warp_gives_the_mesh_distance_and_the_sdf_warp_its_fallback(flame, sdf_warp, mesh_warp):
    params = torch.zeros(1, flame.layout.size)
    far = torch.tensor([[[0.0, 0.0, 5.0], [0.49, 0.0, 0.0]]])
    s, canonical = sdf_warp(far, params)
    assert s[0, 0] > 1 and torch.equal(canonical[0, 0], far[0, 0])  # outside W's box: identity, far away
    s, canonical = mesh_warp(far, params)
    assert s[0, 0] > 4 and s[0, 1] > 0
    inside = torch.zeros(1, 1, 3)  # the box centre lies inside the head
    assert mesh_warp(inside, params)[0][0, 0] < 0


def _sdf_warp_per_image(warp, points, params):
    """The SDF warp as it was first written: per image, the network on the points inside the box."""
    x = warp.to_flame(points)
    centre, half = warp.sdf.centre, warp.sdf.scale
    sdf, canonical = (x - centre).norm(dim=-1) - half / 2, x.clone()
    frames = warp.flame.head_frame(params)
    for n in range(x.shape[0]):
        idx = ((x[n] - centre).abs() <= half).all(-1).nonzero()[:, 0]
        out = warp.sdf(x[n:n + 1, idx], params[n:n + 1], frames[n:n + 1])
        sdf[n, idx], canonical[n, idx] = out.sdf[0], out.canonical[0]
    return sdf * warp.world_scale, (canonical - warp.centre) * warp.world_scale


def test_sdf_warp_needs_no_host_sync_and_equals_the_per_image_warp(flame, sdf_warp, monkeypatch):
    torch.manual_seed(3)
    points = (torch.rand(3, 50, 3) - 0.5) * 1.6  # both sides of W's box (half-width 0.5)
    params = torch.randn(3, flame.layout.size) * 0.3
    expected = _sdf_warp_per_image(sdf_warp, points, params)
    inside = ((sdf_warp.to_flame(points) - sdf_warp.sdf.centre).abs() <= sdf_warp.sdf.scale).all(-1)
    assert inside.any() and not inside.all()
    small_chunks = SDFWarp(flame, sdf_warp.sdf, sdf_warp.world_scale, chunk=7)  # several chunks, one short
    # nonzero() waits for the GPU (the size of its result): the render path must not call it.
    def no_sync(*args, **kwargs):
        raise AssertionError("nonzero() in the render path")
    monkeypatch.setattr(torch.Tensor, "nonzero", no_sync)
    monkeypatch.setattr(torch, "nonzero", no_sync)
    for warp in (sdf_warp, small_chunks):
        for got, want in zip(warp(points, params), expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_load_warp_from_a_stage_one_run(flame_dir, tmp_path):
    from omnifast.sdf.train import TrainConfig, train

    config = TrainConfig(flame_dir=flame_dir, n_shape=10, n_expr=10, steps=2, batch=1, surface_points=32,
                         space_points=32, network=TINY_SDF, eval_every=2, checkpoint_every=2, eval_meshes=1,
                         eval_points=32)
    train(config, str(tmp_path / "run"), progress=False, log=lambda *a: None)
    for kind in ("sdf", "mesh"):
        warp = load_warp(str(tmp_path / "run"), kind)
        renderer = Renderer(warp, RenderConfig(depth_resolution=4, depth_resolution_importance=4))
        planes = torch.randn(1, 3, 32, 3, 8, 8)
        labels = torch.cat([camera_labels(orbit_cam2world(math.pi / 2, math.pi / 2), ffhq_intrinsics()),
                            torch.zeros(1, warp.param_dim)], -1)
        out = renderer(planes, OSGDecoder(pose_dim=warp.param_dim - 10), labels, 4)
        assert out.features.shape == (1, 32, 4, 4) and torch.isfinite(out.features).all()
    with pytest.raises(ValueError, match="kind must be 'sdf' or 'mesh'"):
        load_warp(str(tmp_path / "run"), "grid")


# ---- clear errors

def test_bad_configurations_raise_clear_errors(flame, sdf_warp):
    planes, labels, *_ = scene(flame, 2)
    decoder = OSGDecoder(8, pose_dim=pose_dim(flame)).double()
    renderer = renderer_for(sdf_warp, depth_resolution=4, depth_resolution_importance=2)
    P = flame.layout.size
    with pytest.raises(ValueError, match=rf"labels must be \[N, {25 + P}\].*{P} FLAME parameters"):
        renderer(planes, decoder, labels[:, :-1], 2)
    with pytest.raises(ValueError, match=r"labels must be \[B, 25 \+ K\]"):
        renderer(planes, decoder, labels[:, :20], 2)
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match=f"resolution must be a positive integer.*{bad!r}"):
            renderer(planes, decoder, labels, bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        renderer(planes, decoder, labels, 2, backend="cuda")
    with pytest.raises(ValueError, match=r"planes must be \[N, 3, C, \(D,\) H, W\]"):
        renderer(planes[:, :2], decoder, labels, 2)
    for key, value, message in (("depth_resolution", 1, "depth_resolution must be an integer >= 2"),
                                ("ray_end", 2.0, "ray_end must exceed ray_start"),
                                ("box_warp", 0, "box_warp must be a positive number"),
                                ("density", "laplace", "density must be one of"),
                                ("mode", "alpha", "mode must be one of"),
                                ("depth_resolution_importance", -1, "must be a non-negative integer"),
                                ("sampling", "stochastic", "sampling must be one of"),
                                ("proposal_samples", 1, "proposal_samples must be an integer >= 2"),
                                ("probe_pool", 2, "probe_pool must be odd"),
                                ("proposal_bins", 2.5, "proposal_bins must be an integer >= 4"),
                                ("prior_band", 0, "prior_band must be a positive number"),
                                ("prior_share", float("nan"), "prior_share must be a non-negative number"),
                                ("uniform_share", 0, r"uniform_share must be in \(0, 1\)"),
                                ("prior_share", 0.99, r"prior_share \+ uniform_share below 1")):
        with pytest.raises(ValueError, match=message):
            RenderConfig(**{key: value})
    with pytest.raises(ValueError, match=r"FLAME parameters must be \[N, "):
        sdf_warp(torch.zeros(1, 2, 3), torch.zeros(1, P + 1))
