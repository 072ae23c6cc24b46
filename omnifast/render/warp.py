"""The frozen warp of stage II: each observation-space sample to its prior signed distance and
its canonical point, ``W(x | p) = (s, x_bar)``, in the renderer's world units.

Two priors: the semantic SDF of a stage I run (OmniAvatar's, :class:`SDFWarp`) and the posed
FLAME mesh itself through the closest-point kernel (:class:`MeshWarp`: exact distances and
correspondences). Neither is trained in stage II: they run without gradients. The world is
FLAME's metres scaled by ``world_scale`` about the centre of the stage I box, so that the box fits
the renderer's ``box_warp`` cube."""
import torch
from torch import nn

from .. import reference
from ..ops.mesh import mesh_index
from ..sdf.data import PRIOR_SIGN as SIGN


class Warp(nn.Module):
    """Shared parts: the FLAME model (for the head's rigid motion and the mesh), the world frame
    and the parameter count; subclasses define :meth:`flame_space`."""
    differentiable = False

    def __init__(self, flame, centre, world_scale, chunk=None):
        super().__init__()
        self.flame = flame
        for p in self.flame.parameters():
            p.requires_grad_(False)
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).reshape(3))
        self.world_scale = float(world_scale)
        self.chunk = None if chunk is None else int(chunk)

    @property
    def param_dim(self):
        return self.flame.layout.size

    def check_params(self, params):
        if params.dim() != 2 or params.shape[1] != self.param_dim:
            raise ValueError(f"warp: the FLAME parameters must be [N, {self.param_dim}] "
                             f"({self.flame.layout.describe()}, the stage I run's layout), "
                             f"got {list(params.shape)}")

    def to_flame(self, points):
        return points / self.world_scale + self.centre.to(points.dtype)

    def forward(self, points, params, backend="omnifast", differentiable=False):
        """``points [N, M, 3]`` (world), ``params [N, P]`` -> ``(prior SDF [N, M], canonical
        [N, M, 3])`` in world units, without gradients; ``differentiable``: with gradients
        with respect to the points (the eikonal loss), never to the warp's own weights."""
        self.check_params(params)
        if differentiable and not self.differentiable:
            raise ValueError(f"{type(self).__name__} has no gradient with respect to the points: "
                             f"use the semantic SDF's warp")
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            x = self.to_flame(points)
            sdf, canonical = self.flame_space(x, params, backend)
            return sdf * self.world_scale, (canonical - self.centre.to(x.dtype)) * self.world_scale


class SDFWarp(Warp):
    """OmniAvatar's warp: the semantic SDF network inside its box (in chunks), and outside it
    OmniAvatar's fallback: the identity correspondence and the distance to a sphere of half the
    box's half-width about its centre (positive, so the space outside the box stays empty). The
    network runs on every point, the whole batch at once, and the box mask picks its answer:
    gathering the points inside would cost a host synchronisation (``nonzero``) per call."""
    differentiable = True
    fast_softplus = True  # omnifast.softplus in the MLP under the omnifast backend (float32)

    def __init__(self, flame, sdf, world_scale, chunk=None):
        super().__init__(flame, sdf.centre.detach().cpu(), world_scale, chunk)
        self.sdf = sdf
        for p in self.sdf.parameters():
            p.requires_grad_(False)

    def flame_space(self, x, params, backend):
        dtype = self.sdf.centre.dtype  # the network's own
        frames = self.flame.head_frame(params).to(dtype)
        centre, half = self.sdf.centre.to(x.dtype), self.sdf.scale.to(x.dtype)
        sdf = (x - centre).norm(dim=-1) - half / 2
        canonical = x.clone()
        inside = ((x - centre).abs() <= half).all(-1)
        # about ``chunk`` points per network call; on the CPU a few thousand, so that the
        # activations stay in the cache between layers (16,384 points took 1.1-1.3x as long)
        chunk = self.chunk if self.chunk is not None else (4096 if x.is_cpu else 16384)
        step = max(1, chunk // max(1, x.shape[0]))
        # omnifast's softplus where it is the faster one: float32 (PyTorch's float64 is faster)
        fast_softplus = self.fast_softplus and backend == "omnifast" and dtype == torch.float32
        for start in range(0, x.shape[1], step):
            part, keep = slice(start, start + step), inside[:, start:start + step]
            out = self.sdf(x[:, part].to(dtype), params.to(dtype), frames, fast_softplus=fast_softplus)
            sdf[:, part] = torch.where(keep, out.sdf.to(x.dtype), sdf[:, part])
            canonical[:, part] = torch.where(keep[..., None], out.canonical.to(x.dtype), canonical[:, part])
        return sdf, canonical


class MeshWarp(Warp):
    """The exact prior: the signed distance to the posed FLAME mesh (hole caps closed) and the
    correspondence through the closest point's barycentric coordinates, offset along the
    canonical normal (:func:`omnifast.correspondence`); the reference backend answers with the
    brute-force search (small inputs only)."""

    def __init__(self, flame, centre, world_scale):
        super().__init__(flame, centre, world_scale)
        self.faces = flame.caps.faces
        self.index = mesh_index(self.faces)

    def flame_space(self, x, params, backend):
        caps = self.flame.caps
        verts = caps.verts(self.flame(params)).to(x.dtype)
        canonical_verts = caps.verts(self.flame.canonical_verts()).to(x.dtype)
        if backend == "reference":
            canonical, distance = reference.mesh.correspondence(x, verts, canonical_verts,
                                                                self.faces.to(x.device), sign=SIGN)
            return distance, canonical
        out = self.index.correspondence(x, verts, canonical_verts, sign=SIGN)
        return out.distance, out.canonical_points


def world_scale_for(box_half_width, box_warp):
    """The scale that fits a stage I box (half-width in metres) into the renderer's cube."""
    return 0.5 * float(box_warp) / float(box_half_width)


def world_frame(flame, box_warp=1.0):
    """``(centre [3], world_scale)`` of the world a stage I run on ``flame`` renders in: the
    centre and scale of the box its semantic SDF covers (the padded canonical bounding box, as
    :class:`omnifast.sdf.data.SDFSampler` makes it), known without the run."""
    from ..sdf.data import SDFSampler

    sampler = SDFSampler(flame, surface_points=1, space_points=1)
    centre = (sampler.box_min + sampler.box_max) / 2
    return centre.float(), world_scale_for(float(((sampler.box_max - sampler.box_min) / 2).max()), box_warp)


def load_warp(run_dir, kind="sdf", box_warp=1.0, device=None):
    """The frozen warp of a stage I run folder: ``kind="sdf"`` (its semantic SDF) or ``"mesh"``
    (its FLAME mesh, same world frame)."""
    from ..sdf.train import load_run

    if kind not in ("sdf", "mesh"):
        raise ValueError(f"load_warp: kind must be 'sdf' or 'mesh', got {kind!r}")
    run = load_run(run_dir, device)
    model = run.model.eval()
    scale = world_scale_for(float(model.scale), box_warp)
    if kind == "sdf":
        return SDFWarp(run.flame, model, scale)
    return MeshWarp(run.flame, model.centre.detach().cpu(), scale)
