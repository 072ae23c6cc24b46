"""OmniAvatar's renderer: camera labels to a low-resolution feature image through the frozen
warp, the tri-grid, the decoder and SDF-to-density compositing, with coarse and importance
passes (EG3D's ``ImportanceRenderer`` flow)."""
import dataclasses
import functools
import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry.cameras import camera_rays, check_camera_labels, split_labels
from ..ops.triplane import SharedPlanes
from .backends import backend_named, in_chunks

RenderOutput = namedtuple("RenderOutput", [
    "features",    # [N, C, R, R] composited colour features (raw: no x2 - 1)
    "depth",       # [N, 1, R, R] EG3D's expected depth
    "opacity",     # [N, 1, R, R] sum of the weights
    "delta",       # [N, R*R, S] the decoder's correction at every sample (depth order): the SDF
                   #   correction (density="sdf") or the density correction ("density_delta")
    "prior_sdf",   # [N, R*R, S] the warp's prior signed distance at the same samples
    "depths",      # [N, R*R, S] the sample depths
    "weights",     # [N, R*R, L] compositing weights (L = S - 1 midpoint, S absorption) or None
])

DENSITIES = ("sdf", "density_delta")
MODES = ("midpoint", "absorption")
SAMPLINGS = ("dense", "proposal")
PROPOSAL_CHUNK = 1 << 22  # pdf entries per importance-sampling call of the proposal sampler


@dataclasses.dataclass
class RenderConfig:
    """EG3D's FFHQ rendering settings with OmniAvatar's additions.

    ``density``: ``"sdf"`` composites ``s + delta`` through ``sigmoid(-sdf / beta) / beta``
    (OmniAvatar's SDF path, learnable beta); ``"density_delta"`` adds the decoder's output to the
    prior's density ``sigmoid(-s / beta) / beta`` (OmniAvatar's released ``delta_geom`` path).
    ``chunk``: samples per sample-and-decode chunk (omnifast backend).

    ``sampling``: ``"dense"`` (EG3D's coarse samples plus importance samples, both shaded with
    gradients) or ``"proposal"``: the dense render without gradients at ``1 / probe_stride`` of
    the resolution (the probe) gives each pixel a proposal over ``proposal_bins`` even bins of
    the ray (the probe's weights, max-pooled over ``probe_pool`` x ``probe_pool`` probe pixels so
    that thin structures survive, mixed with ``prior_share`` of a band of half-width
    ``prior_band`` world units about the prior's first zero crossing and ``uniform_share`` of a
    uniform floor); ``proposal_samples`` depths per ray are drawn from it and shaded with
    gradients, nothing else."""
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    disparity_space_sampling: bool = False
    det_sampling: bool = False
    density: str = "sdf"
    mode: str = "midpoint"
    white_back: bool = False
    beta_init: float = 0.001
    chunk: int = 131072
    sampling: str = "dense"
    proposal_samples: int = 24
    probe_stride: int = 4
    probe_pool: int = 3
    proposal_bins: int = 256
    proposal_dilation: int = 2
    prior_band: float = 0.03
    prior_share: float = 0.25
    uniform_share: float = 0.02

    def __post_init__(self):
        for name in ("depth_resolution", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"RenderConfig: {name} must be an integer >= 2, got {value!r}")
        n = self.depth_resolution_importance
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"RenderConfig: depth_resolution_importance must be a non-negative integer, got {n!r}")
        for name in ("ray_start", "ray_end", "box_warp", "beta_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"RenderConfig: {name} must be a positive number, got {value!r}")
        if self.ray_end <= self.ray_start:
            raise ValueError(f"RenderConfig: ray_end must exceed ray_start, got {self.ray_start} and {self.ray_end}")
        if self.density not in DENSITIES:
            raise ValueError(f"RenderConfig: density must be one of {DENSITIES}, got {self.density!r}")
        if self.mode not in MODES:
            raise ValueError(f"RenderConfig: mode must be one of {MODES}, got {self.mode!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"RenderConfig: sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        for name, low in (("proposal_samples", 2), ("probe_stride", 1), ("probe_pool", 1), ("proposal_bins", 4),
                          ("proposal_dilation", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"RenderConfig: {name} must be an integer >= {low}, got {value!r}")
        if self.probe_pool % 2 == 0:
            raise ValueError(f"RenderConfig: probe_pool must be odd (a neighbourhood about each probe pixel), "
                             f"got {self.probe_pool}")
        for name in ("prior_band", "prior_share", "uniform_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "prior_band" and value == 0):
                kind = "positive" if name == "prior_band" else "non-negative"
                raise ValueError(f"RenderConfig: {name} must be a {kind} number, got {value!r}")
        if not 0 < self.uniform_share < 1 or self.prior_share + self.uniform_share >= 1:
            raise ValueError(f"RenderConfig: uniform_share must be in (0, 1) and prior_share + uniform_share "
                             f"below 1 (the rest follows the probe), got {self.uniform_share} and "
                             f"{self.prior_share}")


class Renderer(nn.Module):
    """Renders tri-grids with a decoder through a frozen warp (:mod:`omnifast.render.warp`).

    Args:
        warp: :class:`~omnifast.render.warp.SDFWarp` or :class:`~omnifast.render.warp.MeshWarp`
            (frozen: no gradient reaches it).
        config: :class:`RenderConfig`.
    Holds the learnable ``sigmoid_beta`` (OmniAvatar's name), initialised to ``config.beta_init``.
    """

    def __init__(self, warp, config=None):
        super().__init__()
        self.config = config or RenderConfig()
        self.warp = warp
        for p in self.warp.parameters():
            p.requires_grad_(False)
        self.sigmoid_beta = nn.Parameter(torch.full((1,), float(self.config.beta_init)))

    def forward(self, planes, decoder, labels, resolution, *, backend="omnifast", generator=None,
                return_weights=False):
        """Render ``planes [N, 3, C, D, H, W]`` (tri-grid) or ``[N, 3, C, H, W]`` (tri-plane) for
        ``labels [N, 25 + P]`` (cam2world 16 | intrinsics 9 | FLAME parameters P, the warp's
        layout) at ``resolution`` pixels per side; see :class:`RenderOutput`. ``backend``:
        ``"omnifast"`` or ``"reference"`` (every kernel from its pure-PyTorch reference); draws
        come from ``generator`` (default: the global one), in EG3D's order."""
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer (pixels per side), got {resolution!r}")
        cam2world, intrinsics, params = self.split_labels(labels)
        self.check_planes(planes, labels.shape[0])
        origins, directions = camera_rays(cam2world, intrinsics, resolution)
        depths = None
        if self.config.sampling == "proposal":
            # The probe's copy of the planes is dropped with it: the final samples' render makes
            # its own, which it need not hold through the backward.
            depths = self.proposal_depths(backend_named(backend).prepare(planes), decoder, cam2world, intrinsics,
                                          params, resolution, backend=backend, generator=generator)
        out = self.render_rays(planes, decoder, origins, directions, params, backend=backend,
                               generator=generator, return_weights=return_weights, depths=depths)
        image = lambda t: t.permute(0, 2, 1).reshape(t.shape[0], t.shape[-1], resolution, resolution)  # noqa: E731
        return out._replace(features=image(out.features), depth=image(out.depth), opacity=image(out.opacity))

    def split_labels(self, labels):
        """``(cam2world, intrinsics, params)`` of ``labels [N, 25 + P]``, P being the warp's."""
        cam2world, intrinsics, params = split_labels(labels)
        if params.shape[1] != self.warp.param_dim:
            raise ValueError(f"labels must be [N, {25 + self.warp.param_dim}]: 25 camera numbers and the "
                             f"{self.warp.param_dim} FLAME parameters of the stage I run, got "
                             f"{list(labels.shape)} ({params.shape[1]} parameters)")
        if labels.shape[0] == 0:
            raise ValueError(f"labels must hold at least one image's label, got {list(labels.shape)}")
        check_camera_labels(labels)
        self.check_params(params, "labels' FLAME parameters")
        return cam2world, intrinsics, params

    def check_params(self, params, name="params"):
        if not isinstance(params, torch.Tensor) or not params.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got "
                             f"{params.dtype if isinstance(params, torch.Tensor) else type(params).__name__}")
        self.warp.flame.layout.check(params, name)

    @staticmethod
    def check_planes(planes, batch):
        if not isinstance(planes, torch.Tensor) or not planes.is_floating_point():
            raise ValueError(f"planes must be a floating-point tensor, got "
                             f"{planes.dtype if isinstance(planes, torch.Tensor) else type(planes).__name__}")
        if planes.dim() not in (5, 6) or planes.shape[0] != batch or planes.shape[1] != 3 or batch == 0:
            raise ValueError(f"planes must be [N, 3, C, (D,) H, W] with N = {batch} (the labels' or points' "
                             f"batch, at least 1), got {list(planes.shape)}")

    @staticmethod
    def pose_bias(decoder, params, dtype):
        """The decoder's per-image bias from the pose part of ``params`` (after the shape)."""
        return decoder.pose_bias(params[:, params.shape[1] - decoder.pose_dim:].to(dtype))

    def sample(self, planes, decoder, points, params, *, backend="omnifast"):
        """At world ``points [N, M, 3]`` (not along rays, as EG3D's ``G.sample``): ``(colour
        features [N, M, C], the decoder's correction [N, M, 1], the prior SDF [N, M])``."""
        if not isinstance(points, torch.Tensor) or not points.is_floating_point() or points.dim() != 3 \
                or points.shape[-1] != 3 or 0 in points.shape[:2]:
            got = f"{points.dtype} {list(points.shape)}" if isinstance(points, torch.Tensor) else type(points).__name__
            raise ValueError(f"points must be a floating-point [N, M, 3] tensor with N, M >= 1, got {got}")
        self.check_planes(planes, points.shape[0])
        self.check_params(params)
        if params.dim() != 2 or params.shape[0] != points.shape[0]:
            raise ValueError(f"params must be [N, {self.warp.param_dim}] with the N of points ({points.shape[0]}), "
                             f"got {list(params.shape)}")
        backend = backend_named(backend)
        prior, canonical = self.warp(points, params, backend.kernels)
        colour, delta = decoder.decode(backend.triplane(planes, canonical.to(planes.dtype), self.config.box_warp),
                                       self.pose_bias(decoder, params, planes.dtype))
        return colour, delta, prior

    @staticmethod
    def prepare(planes, backend="omnifast"):
        """The planes in the backend's layout (omnifast: feature-last, one copy). Rendering and
        sampling prepared planes copy nothing more, so a caller that does both (a training step
        with the density regulariser) prepares them once."""
        return backend_named(backend).prepare(planes)

    def sdf_gradient(self, planes, decoder, points, params, *, backend="omnifast"):
        """The gradient of the final SDF ``s + delta s`` with respect to world ``points [N, M, 3]``
        (through the frozen warp and the tri-grid), differentiable with respect to the tri-grid and
        the decoder (the eikonal loss; it runs the tri-plane sampling's double backward)."""
        if self.config.density != "sdf":
            raise ValueError(f"sdf_gradient: render density must be 'sdf', got {self.config.density!r}")
        backend = backend_named(backend)
        with torch.enable_grad():
            points = points.detach().requires_grad_(True)
            prior, canonical = self.warp(points, params, backend.kernels, differentiable=True)
            _, delta = decoder.decode(backend.triplane(planes, canonical.to(planes.dtype), self.config.box_warp),
                                      self.pose_bias(decoder, params, planes.dtype))
            sdf = prior.to(delta.dtype) + delta[..., 0]
            return torch.autograd.grad(sdf.sum(), points, create_graph=True)[0]

    def stratified(self, origins, generator=None, deterministic=None):
        """EG3D's ``sample_stratified`` for the config's scalar ray start/end: ``[N, M, S, 1]``."""
        c, (N, M) = self.config, origins.shape[:2]
        S, start, end = c.depth_resolution, c.ray_start, c.ray_end
        g = dict(device=origins.device, dtype=origins.dtype)
        det = c.det_sampling if deterministic is None else deterministic
        if c.disparity_space_sampling:
            t = torch.linspace(0, 1, S, **g).reshape(1, 1, S, 1).repeat(N, M, 1, 1)
            if not det:
                t = t + torch.rand(t.shape, generator=generator, **g) / (S - 1)
            return 1.0 / (1.0 / start * (1.0 - t) + 1.0 / end * t)
        depths = torch.linspace(start, end, S, **g).reshape(1, 1, S, 1).repeat(N, M, 1, 1)
        if not det:
            depths = depths + torch.rand(depths.shape, generator=generator, **g) * ((end - start) / (S - 1))
        return depths

    def _points(self, backend, origins, directions, depths, params):
        """The warp at ``depths [N, M, S, 1]``: ``(canonical [N, M, S, 3], prior SDF [N, M, S, 1])``."""
        N, M, S = depths.shape[:3]
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(N, M * S, 3)
        prior, canonical = self.warp(points, params, backend.kernels)
        return canonical.to(depths.dtype).reshape(N, M, S, 3), prior.to(depths.dtype).reshape(N, M, S, 1)

    def _shade(self, backend, decoder, want_weights, planes, bias, beta, canonical, prior, depths):
        """Samples to pixels: tri-grid features at the canonical points, the decoder, the density
        and compositing. Returns ``(features, depth, opacity, delta [N, M, S], weights or None)``;
        ``depth`` is unclamped (NaN for an empty ray) so that chunks can be joined."""
        c, (N, M, S) = self.config, depths.shape[:3]
        colour, delta = decoder.decode(backend.triplane(planes, canonical.reshape(N, M * S, 3), c.box_warp), bias)
        colour, delta = colour.reshape(N, M, S, -1), delta.reshape(N, M, S, 1)
        common = dict(field_type="sdf", beta=beta, mode=c.mode, white_back=c.white_back, return_weights=want_weights,
                      clamp_depth=False)
        if c.density == "sdf":
            out = backend.composite(colour, prior + delta, depths, **common)
        else:
            out = backend.composite(colour, prior, depths, density_delta=delta, **common)
        # A ray's own depth lies inside its samples' range; an empty ray's (0 / 0) is marked NaN
        # here and given its image's maximum sample depth later.
        depth = torch.where(out.opacity == 0, torch.full_like(out.depth, math.nan), out.depth)
        return out.features, depth, out.opacity, delta[..., 0], None if out.weights is None else out.weights[..., 0]

    @torch.no_grad()
    def proposal_depths(self, planes, decoder, cam2world, intrinsics, params, resolution, *, backend="omnifast",
                        generator=None):
        """The proposal sampler's depths ``[N, R^2, K, 1]`` (K = ``proposal_samples``) for the
        ``resolution`` x ``resolution`` image of each camera; no gradients (see
        :class:`RenderConfig`)."""
        c, N, R = self.config, planes.shape[0], resolution
        probe = -(-R // c.probe_stride)
        origins, directions = camera_rays(cam2world, intrinsics, probe)
        # Evenly spaced probe depths: the final samples' draws carry the randomness.
        out = self.render_rays(planes, decoder, origins, directions, params, backend=backend, generator=generator,
                               return_weights=True, deterministic=True)
        # Each interval's weight (and prior band) goes to the proposal bin of its middle.
        depths, B = out.depths, c.proposal_bins
        middle = 0.5 * (depths[..., :-1] + depths[..., 1:]) if out.weights.shape[-1] < depths.shape[-1] else depths
        index = ((middle - c.ray_start) * (B / (c.ray_end - c.ray_start))).long().clamp_(0, B - 1)
        empty = depths.new_zeros(N, probe * probe, B)
        weights = empty.scatter_add(-1, index, out.weights)
        band = empty.scatter_reduce(-1, index, self._prior_band(out.prior_sdf, out.weights.shape[-1]), "amax")

        def pooled(t):  # over the neighbourhood of each probe pixel (and along the ray): [N, probe^2, B]
            t = t.transpose(1, 2).reshape(N, 1, B, probe, probe)
            d = c.proposal_dilation
            t = F.max_pool3d(t, (2 * d + 1, c.probe_pool, c.probe_pool), 1, (d, c.probe_pool // 2, c.probe_pool // 2))
            return t.reshape(N, B, probe * probe).transpose(1, 2)

        normalise = lambda t: t / t.sum(-1, keepdim=True).clamp_min(1e-30)  # noqa: E731
        share = c.prior_share / (1 - c.uniform_share)
        # importance_sample adds EG3D's 0.01 to each of its B - 2 pdf entries: scaled so, that
        # constant is the uniform floor's share of the draws.
        scale = 0.01 * (B - 2) * (1 - c.uniform_share) / c.uniform_share
        proposal = normalise((1 - share) * normalise(pooled(weights)) + share * normalise(pooled(band))) * scale
        # Each pixel takes the proposal of the probe pixel it lies in, a chunk of rays at a time
        # (a [rays, bins] pdf per pixel at once would be the largest tensor of a 512^2 render).
        cell = torch.arange(R, device=depths.device) * probe // R
        owner = (cell[:, None] * probe + cell[None, :]).reshape(-1)
        edges = torch.linspace(c.ray_start, c.ray_end, B + 1, device=depths.device, dtype=depths.dtype)
        step = max(1, PROPOSAL_CHUNK // (N * (B + 1)))
        drawn = torch.cat([backend_named(backend).importance(
            edges.view(1, 1, B + 1, 1).expand(N, len(part), B + 1, 1), proposal[:, part].unsqueeze(-1),
            c.proposal_samples - 2, c.det_sampling, generator, stratified=True) for part in owner.split(step)], 1)
        # The ray's ends are samples too: the marcher integrates EG3D's density floor
        # (softplus(-1) per unit length, the whole ray's "fog") over the whole ray, as the dense
        # render does, whatever the draws.
        ends = edges[[0, -1]].view(1, 1, 2, 1).expand(N, R * R, 2, 1)
        return torch.cat([ends[:, :, :1], drawn, ends[:, :, 1:]], 2)

    def _prior_band(self, prior, intervals):
        """``exp(-(s / prior_band)^2)`` per interval (the larger of its ends; 1 where ``s``
        changes sign) of ``prior [N, M, S]`` (the probe's), up to the first interval that ends
        inside the prior's surface: ``[N, M, intervals]``."""
        near = torch.exp(-(prior / self.config.prior_band).square())
        inside = prior < 0
        if intervals == prior.shape[-1]:  # absorption: per sample
            return near * (inside.cumsum(-1) - inside.long() == 0)
        crossing = inside[..., :-1] != inside[..., 1:]
        band = torch.maximum(near[..., :-1], near[..., 1:]).masked_fill(crossing, 1.0)
        return band * (inside[..., :-1].cumsum(-1) == 0)

    def render_rays(self, planes, decoder, origins, directions, params, *, backend="omnifast", generator=None,
                    return_weights=False, depths=None, deterministic=None):
        """The renderer on rays ``origins, directions [N, M, 3]`` with FLAME ``params [N, P]``:
        :class:`RenderOutput` with per-ray ``[N, M, .]`` images. ``depths [N, M, K, 1]`` (sorted
        along each ray): shade these samples only (the proposal sampler's), no coarse or
        importance pass. ``deterministic``: evenly spaced depths and quantiles (None: the config's
        ``det_sampling``).

        The coarse samples are shaded once without gradients for the importance weights (EG3D
        samples the fine depths under ``no_grad``); then coarse and fine samples are merged in
        depth order and shaded together, which gives EG3D's result (shading is per sample)
        without keeping per-sample colours from the coarse pass."""
        backend, c = backend_named(backend), self.config
        given_planes, planes = planes, backend.prepare(planes)
        bias = self.pose_bias(decoder, params, planes.dtype)
        # A step of an optimiser can push beta through zero: its magnitude is used (VolSDF's
        # |beta|, the same for any positive beta), so its gradient goes on, at no less than 1e-6.
        beta = self.sigmoid_beta.to(planes.dtype).abs().clamp_min(1e-6)
        given = depths is not None
        det = c.det_sampling if deterministic is None else deterministic
        depths = depths.to(planes.dtype) if given else self.stratified(origins, generator, det).to(planes.dtype)
        canonical, prior = self._points(backend, origins, directions, depths, params)
        shade = lambda weights: functools.partial(self._shade, backend, decoder, weights)  # noqa: E731
        if c.depth_resolution_importance and not given:
            with torch.no_grad():
                weights = in_chunks(backend, shade(True), c.chunk, canonical, prior, depths,
                                    shared=(planes, bias, beta))[4]
            fine = backend.importance(depths, weights.unsqueeze(-1), c.depth_resolution_importance, det, generator)
            fine_canonical, fine_prior = self._points(backend, origins, directions, fine, params)
            depths, (canonical, prior) = backend.merge(depths, fine, (canonical, prior), (fine_canonical, fine_prior))
        sampled = backend.shared(given_planes, planes, c.box_warp)
        features, depth, opacity, delta, weights = in_chunks(backend, shade(return_weights), c.chunk, canonical,
                                                             prior, depths, shared=(sampled, bias, beta))
        if isinstance(sampled, SharedPlanes):
            sampled.release()  # the backward's recomputed chunks each copy (and drop) what they sample
        # Each image within its own samples' range: a NaN in one image's rays stays in that image.
        per_image = depths.flatten(1)
        shape = (-1,) + (1,) * (depth.dim() - 1)
        depth = torch.clamp(torch.nan_to_num(depth, float("inf")), per_image.amin(1).view(shape),
                            per_image.amax(1).view(shape))
        return RenderOutput(features, depth, opacity, delta, prior[..., 0], depths[..., 0], weights)
