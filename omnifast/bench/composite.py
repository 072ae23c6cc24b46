"""Compositing benchmark cases: omnifast.composite vs the MipRayMarcher2 reference chain."""
from dataclasses import dataclass

import torch

from .. import reference
from ..ops.composite import composite

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


def composite_forward_with_graph(case, impl, device, dtype=torch.float32):
    """A forward whose result keeps the autograd graph: what training holds until backward."""
    fn = composite if impl == "omnifast" else reference.composite
    features, sdf, depths, delta, beta = make_inputs(case, device, dtype)
    for t in (features, sdf, delta, beta):
        t.requires_grad_(True)
    return lambda: fn(features, sdf, depths, beta=beta, density_delta=delta)


def composite_runner(case, impl, pass_name, device, dtype=torch.float32):
    fn = composite if impl == "omnifast" else reference.composite
    features, sdf, depths, delta, beta = make_inputs(case, device, dtype)

    def render():
        out = fn(features, sdf, depths, beta=beta, density_delta=delta)
        return out.features, out.depth, out.opacity

    if pass_name == "forward":
        def run():
            with torch.no_grad():
                return render()
        return run
    for t in (features, sdf, delta, beta):
        t.requires_grad_(True)
    with torch.no_grad():
        upstream = [torch.randn_like(t) for t in render()]

    def run():
        return torch.autograd.grad(render(), (features, sdf, delta, beta), upstream)
    return run
