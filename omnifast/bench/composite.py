"""Compositing benchmark cases: omnifast.composite vs the MipRayMarcher2 reference chain."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import reference
from ..ops.composite import composite
from ..reference import rendering
from .measure import import_optional

COMPOSITE_PASSES = ("forward", "forward+backward")


@dataclass(frozen=True)
class CompositeCase:
    name: str
    batch: int      # images
    rays: int       # rays x rays per image
    samples: int    # samples per ray (coarse + fine)
    channels: int
    note: str = ""

    @property
    def points(self):
        return self.batch * self.rays * self.rays * self.samples


def composite_cases(device, quick=False):
    """EG3D's 4 images x (48 + 48) samples x 32 channels at 64^2, 128^2 and 256^2 rays (GPU);
    one image on the CPU."""
    if quick:
        return [CompositeCase("quick", 1, 8, 16, 8)]
    if torch.device(device).type == "cuda":
        return [CompositeCase(f"N=4 {r}^2 rays x 96 x 32", 4, r, 96, 32) for r in (64, 128, 256)]
    note = "one image of the GPU case's batch of 4, for 2 CPU cores"
    return [CompositeCase("64^2 rays x 96 x 32 (cpu: N=1)", 1, 64, 96, 32, note),
            CompositeCase("128^2 rays x 96 x 32 (cpu: N=1)", 1, 128, 96, 32, note),
            CompositeCase("256^2 rays x 24 x 32 (cpu: N=1)", 1, 256, 24, 32,
                          note + ", 24 instead of 96 samples per ray")]


def make_inputs(case, device, dtype=torch.float32, seed=0):
    """Features, a signed distance that crosses a surface on most rays, sorted stratified depths,
    a decoder density correction, and OmniAvatar's sharp initial beta."""
    gen = torch.Generator().manual_seed(seed)
    shape = (case.batch, case.rays * case.rays, case.samples)
    bins = torch.linspace(2.25, 3.3, case.samples + 1, dtype=dtype)
    depths = bins[:-1] + torch.rand(*shape, generator=gen, dtype=dtype) * (bins[1:] - bins[:-1])
    surface = 2.5 + 0.5 * torch.rand(*shape[:2], 1, generator=gen, dtype=dtype)
    sdf = depths - surface
    features = torch.rand(*shape, case.channels, generator=gen, dtype=dtype)
    delta = 0.1 * torch.randn(*shape, generator=gen, dtype=dtype)
    beta = torch.tensor([0.001], dtype=dtype)
    return [t.to(device) for t in (features, sdf[..., None], depths[..., None], delta[..., None],
                                   beta)]


NERFACC_DENSE, NERFACC_PACKED = "nerfacc (dense)", "nerfacc (packed)"


def _render_fn(impl):
    """fn(features, sdf, depths, beta, delta) -> (features, depth, opacity) for one contender."""
    if impl in ("omnifast", "reference"):
        op = composite if impl == "omnifast" else reference.composite

        def render(features, sdf, depths, beta, delta):
            out = op(features, sdf, depths, beta=beta, density_delta=delta)
            return out.features, out.depth, out.opacity
        return render
    import nerfacc
    return nerfacc_render(nerfacc, packed=impl == NERFACC_PACKED)


def composite_peers(device):
    """The peers present for `device` and {name: why absent}: nerfacc's rendering primitives on
    [rays, samples] tensors (plain PyTorch scans) and, on CUDA, on packed samples (its own CUDA
    scan, compiled by nerfacc on first use)."""
    nerfacc, why = import_optional("nerfacc")
    if nerfacc is None:
        return [], {NERFACC_DENSE: why, NERFACC_PACKED: why}
    if torch.device(device).type != "cuda":
        return [NERFACC_DENSE], {NERFACC_PACKED: "nerfacc's packed scans are CUDA kernels"}
    backend, why = import_optional("nerfacc.cuda._backend")  # builds its kernels on first use
    if backend is not None and backend._C is None:
        why = "nerfacc found no CUDA toolkit to build its kernels"
    if why is not None:
        return [NERFACC_DENSE], {NERFACC_PACKED: why}
    return [NERFACC_DENSE, NERFACC_PACKED], {}


def nerfacc_render(nerfacc, packed=False):
    """The same chain as a nerfacc user writes it: raw density, midpoint averaging and
    softplus(sigma - 1) as the reference computes them, then nerfacc's weights and sums. Its
    transmittance is exp(-exclusive sum of sigma * delta) where EG3D multiplies 1 - alpha + 1e-10
    (the two agree to about 1e-10 per interval). `packed`: the samples flattened with per-ray
    (start, count), as nerfacc's samplers hand them over (made once per shape, outside the
    timed work, as a sampler would)."""
    layouts = {}

    def packing(rays, intervals, device):
        if (rays, intervals) not in layouts:
            ray_indices = torch.arange(rays, device=device).repeat_interleave(intervals)
            starts = torch.arange(rays, device=device) * intervals
            layouts[rays, intervals] = (
                torch.stack([starts, torch.full_like(starts, intervals)], -1), ray_indices)
        return layouts[rays, intervals]

    def render(features, sdf, depths, beta, delta):
        density = rendering.raw_density(sdf, "sdf", beta, delta)[..., 0]
        sigma = F.softplus((density[..., :-1] + density[..., 1:]) / 2 - 1)
        colors = (features[..., :-1, :] + features[..., 1:, :]) / 2
        t0, t1 = depths[..., :-1, 0], depths[..., 1:, 0]
        mids = ((t0 + t1) / 2)[..., None]
        if packed:
            rays, intervals = sigma[..., 0].numel(), sigma.shape[-1]
            packed_info, ray_indices = packing(rays, intervals, sigma.device)
            flat = [x.reshape(rays * intervals, *x.shape[sigma.dim():]) for x in
                    (t0, t1, sigma, colors, mids)]
            weights, _, _ = nerfacc.render_weight_from_density(*flat[:3], packed_info=packed_info)
            sums = [nerfacc.accumulate_along_rays(weights, v, ray_indices, rays)
                    for v in (flat[3], None, flat[4])]
            out, opacity, depth_sum = [x.reshape(*sigma.shape[:-1], -1) for x in sums]
        else:
            weights, _, _ = nerfacc.render_weight_from_density(t0, t1, sigma)
            out, opacity, depth_sum = [nerfacc.accumulate_along_rays(weights, v)
                                       for v in (colors, None, mids)]
        depth = torch.nan_to_num(depth_sum / opacity, float("inf"))
        return out, torch.clamp(depth, torch.min(depths), torch.max(depths)), opacity
    return render


def composite_forward_with_graph(case, impl, device, dtype=torch.float32):
    """A forward whose result keeps the autograd graph: what training holds until backward."""
    render = _render_fn(impl)
    features, sdf, depths, delta, beta = make_inputs(case, device, dtype)
    for t in (features, sdf, delta, beta):
        t.requires_grad_(True)
    return lambda: render(features, sdf, depths, beta, delta)


def composite_runner(case, impl, pass_name, device, dtype=torch.float32):
    """The timed call of `impl` ("omnifast", "reference" or a peer's name) for one case and pass."""
    render = _render_fn(impl)
    features, sdf, depths, delta, beta = make_inputs(case, device, dtype)

    if pass_name == "forward":
        def run():
            with torch.no_grad():
                return render(features, sdf, depths, beta, delta)
        return run
    for t in (features, sdf, delta, beta):
        t.requires_grad_(True)
    with torch.no_grad():
        upstream = [torch.randn_like(t) for t in render(features, sdf, depths, beta, delta)]

    def run():
        return torch.autograd.grad(render(features, sdf, depths, beta, delta),
                                   (features, sdf, delta, beta), upstream)
    return run
