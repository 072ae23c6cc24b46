"""Tri-plane sampling benchmark cases: omnifast vs the grid_sample reference."""
from dataclasses import dataclass

import torch

from .. import reference
from ..ops.triplane import triplane_sample

TRIPLANE_PASSES = ("forward", "forward+backward", "forward+double-backward")


@dataclass(frozen=True)
class TriplaneCase:
    name: str
    batch: int        # N images
    channels: int     # C
    resolution: int   # H = W of the planes
    rays: int         # neural rendering resolution: rays x rays per image
    samples: int      # samples per ray; M = rays^2 * samples
    depth: int = 0    # D slices of a tri-grid volume; 0 for EG3D planes
    note: str = ""

    @property
    def points(self):
        return self.rays * self.rays * self.samples

    def bytes_floor(self, itemsize=4):
        """Fewest bytes a forward must move: planes once, coords in, mean features out."""
        planes = 3 * self.batch * self.channels * max(self.depth, 1) * self.resolution ** 2
        return itemsize * (planes + self.batch * self.points * (3 + self.channels))


def triplane_cases(device, quick=False):
    """EG3D's training size and 128^2 neural rendering (GPU); scaled versions on the CPU."""
    if quick:  # seconds, for smoke tests of the harness itself
        return [TriplaneCase("quick", 1, 8, 16, 8, 8), TriplaneCase("quick tri-grid", 1, 8, 16, 8, 8, 2)]
    if torch.device(device).type == "cuda":
        return [
            TriplaneCase("eg3d-train N=4 64^2x96", 4, 32, 256, 64, 96),
            TriplaneCase("render N=4 128^2x96", 4, 32, 256, 128, 96),
            TriplaneCase("omniavatar tri-grid D=3 N=4 64^2x96", 4, 32, 256, 64, 96, depth=3),
        ]
    scaled = "one image of the GPU case's batch of 4, for 2 CPU cores"
    return [
        TriplaneCase("eg3d-train 64^2x96 (cpu: N=1)", 1, 32, 256, 64, 96, note=scaled),
        TriplaneCase("render 128^2 (cpu: N=1, 24 samples/ray)", 1, 32, 256, 128, 24,
                     note=scaled + ", 24 instead of 96 samples per ray"),
        TriplaneCase("omniavatar tri-grid D=3 64^2x96 (cpu: N=1)", 1, 32, 256, 64, 96, depth=3,
                     note=scaled),
    ]


def ray_samples(batch, rays, samples, generator, dtype=torch.float32):
    """[batch, rays^2 * samples, 3] points along camera rays, as EG3D's FFHQ renderer makes them.

    Cameras sit at radius 2.7 around the pivot (0, 0, 0.2), within +-0.3 rad of frontal, with a
    18.84 degree field of view; each ray takes `samples` stratified depths in [2.25, 3.3]. Samples
    of a ray are consecutive, as in EG3D, which gives the kernels their memory locality.
    """
    angles = (torch.rand(batch, 2, generator=generator, dtype=dtype) - 0.5) * 0.6
    yaw, pitch = angles[:, 0], angles[:, 1]
    forward = torch.stack([-torch.sin(yaw) * torch.cos(pitch), -torch.sin(pitch),
                           -torch.cos(yaw) * torch.cos(pitch)], dim=-1)
    pivot = torch.tensor([0.0, 0.0, 0.2], dtype=dtype)
    origin = pivot - 2.7 * forward
    world_up = torch.tensor([[0.0, 1.0, 0.0]], dtype=dtype).expand_as(forward)
    right = torch.nn.functional.normalize(torch.cross(forward, world_up, dim=-1), dim=-1)
    up = torch.cross(right, forward, dim=-1)
    focal = 1 / (2 * torch.tan(torch.deg2rad(torch.tensor(18.837, dtype=dtype)) / 2))
    pixel = (torch.arange(rays, dtype=dtype) + 0.5) / rays - 0.5
    v, u = torch.meshgrid(pixel, pixel, indexing="ij")
    directions = (forward[:, None, None] * focal + right[:, None, None] * u[..., None]
                  - up[:, None, None] * v[..., None])
    directions = torch.nn.functional.normalize(directions.reshape(batch, -1, 3), dim=-1)
    bins = torch.linspace(2.25, 3.3, samples + 1, dtype=dtype)
    jitter = torch.rand(batch, rays * rays, samples, generator=generator, dtype=dtype)
    depths = bins[:-1] + jitter * (bins[1:] - bins[:-1])
    points = origin[:, None, None] + directions[:, :, None] * depths[..., None]
    return points.reshape(batch, -1, 3)


def make_inputs(case, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    spatial = (case.depth,) if case.depth else ()
    spatial += (case.resolution, case.resolution)
    planes = torch.randn(case.batch, 3, case.channels, *spatial, generator=gen, dtype=dtype)
    coords = ray_samples(case.batch, case.rays, case.samples, gen, dtype)
    return planes.to(device), coords.to(device)


def triplane_runner(case, impl, pass_name, device, dtype=torch.float32):
    """A zero-argument callable running one pass of `impl` ("omnifast" or "reference")."""
    fn = triplane_sample if impl == "omnifast" else reference.triplane_sample
    if impl == "reference" and pass_name == "forward+double-backward" and "cuda" in str(device):
        fn = reference.triplane_sample_gather  # torch's CUDA grid_sample has no second derivative
    planes, coords = make_inputs(case, device, dtype)
    if pass_name == "forward":
        def run():
            with torch.no_grad():
                return fn(planes, coords)
        return run
    planes.requires_grad_(True)
    coords.requires_grad_(True)
    with torch.no_grad():
        grad_out = torch.randn_like(fn(planes, coords))
    if pass_name == "forward+backward":
        def run():
            return torch.autograd.grad(fn(planes, coords), (planes, coords), grad_out)
        return run
    direction = torch.randn_like(coords)

    def run():  # an eikonal-style second derivative: d/d(planes, coords) of <d out/d coords, v>
        out = fn(planes, coords)
        (grad_coords,) = torch.autograd.grad(out, coords, grad_out, create_graph=True)
        return torch.autograd.grad((grad_coords * direction).sum(), (planes, coords))
    return run
