"""Training data for the semantic SDF: random FLAME parameters, surface samples with normals and
canonical points, and off-surface samples with ground-truth signed distance and correspondence
from :func:`omnifast.correspondence` on the watertight (capped) posed mesh."""
from collections import namedtuple
from dataclasses import dataclass, fields

import torch

from ..geometry import jitter, surface_samples
from ..ops.mesh import MeshIndex, barycentric_interpolate
from ..runs import check_fields

# The sign of the prior's distance: the winding number, not the pseudonormal. FLAME's expressions
# fold the surface here and there (the lips, the nose); a folded vertex's pseudonormal points the
# wrong way, and every point whose closest feature it is (up to centimetres away) reads inside.
PRIOR_SIGN = "winding"

SDFBatch = namedtuple("SDFBatch", [
    "params",             # [B, P]
    "frames",             # [B, 4, 4] rigid head motion from canonical (Flame.head_frame)
    "surface_points",     # [B, Ns, 3] on the posed watertight mesh
    "surface_normals",    # [B, Ns, 3] unit (interpolated angle-weighted vertex normals)
    "surface_canonical",  # [B, Ns, 3] the same barycentric point on the canonical mesh
    "surface_on_cap",     # [B, Ns] bool: the sample lies on a hole cap
    "space_points",       # [B, Nq, 3] near the surface at several scales and uniform in the box
    "space_sdf",          # [B, Nq] signed distance (negative inside)
    "space_canonical",    # [B, Nq, 3] volumetric correspondence (offset along the canonical normal)
    "space_on_cap",       # [B, Nq] bool: the closest point lies on a hole cap
])


@dataclass
class ParamDistribution:
    """How training (and held-out) FLAME parameters are drawn: Gaussian shape and expression
    coefficients, a jaw opened uniformly about its hinge with a little sideways motion, Gaussian
    neck (and global) rotations. Angles in radians."""
    shape_std: float = 1.0
    expression_std: float = 1.0
    jaw_open_max: float = 0.35
    jaw_side_std: float = 0.03
    neck_std: float = 0.1
    global_std: float = 0.0

    def __post_init__(self):
        check_fields(self, numbers=[(f.name, 0, True) for f in fields(self)])

    def sample(self, layout, batch, generator=None, device="cpu", dtype=torch.float32):
        """``[batch, layout.size]`` parameter vectors."""
        g = dict(generator=generator, dtype=dtype, device=device)
        jaw = torch.cat([torch.rand(batch, 1, **g) * self.jaw_open_max,
                         torch.randn(batch, 2, **g) * self.jaw_side_std], -1)
        parts = dict(shape=torch.randn(batch, layout.n_shape, **g) * self.shape_std,
                     expression=torch.randn(batch, layout.n_expr, **g) * self.expression_std,
                     neck=torch.randn(batch, 3, **g) * self.neck_std, jaw=jaw)
        if layout.global_pose:
            parts["global"] = torch.randn(batch, 3, **g) * self.global_std
        return layout.pack(batch, dtype=dtype, device=device, **parts)

    def scale(self, layout):
        """``[layout.size]`` typical magnitude of each entry (the network's input scaling)."""
        parts = dict(shape=torch.full((layout.n_shape,), self.shape_std),
                     expression=torch.full((layout.n_expr,), self.expression_std),
                     neck=torch.full((3,), self.neck_std),
                     jaw=torch.tensor([self.jaw_open_max / 2, self.jaw_side_std, self.jaw_side_std]))
        if layout.global_pose:
            parts["global"] = torch.full((3,), self.global_std)
        return layout.pack(1, **parts)[0].clamp_min(1e-3)


class SDFSampler:
    """Draws :class:`SDFBatch` es on the device of ``flame``.

    Args:
        flame: an :class:`omnifast.flame.Flame`.
        distribution: :class:`ParamDistribution`.
        surface_points, space_points: samples per mesh.
        near_scales: standard deviations of the near-surface offsets, as fractions of the
            canonical box diagonal (one group of samples per scale).
        uniform_fraction: share of ``space_points`` drawn uniformly in the box.
        box_padding: the box is the canonical bounding box grown by this fraction of its size.
    """

    def __init__(self, flame, distribution=None, surface_points=2048, space_points=2048,
                 near_scales=(0.005, 0.02, 0.06), uniform_fraction=0.15, box_padding=0.15):
        self.flame, self.distribution = flame, distribution or ParamDistribution()
        self.surface_points, self.space_points = surface_points, space_points
        self.near_scales, self.uniform_fraction = tuple(near_scales), uniform_fraction
        self.index = MeshIndex(flame.caps.faces)
        with torch.no_grad():
            canonical = flame.canonical_verts()
            self.canonical_verts = flame.caps.verts(canonical)
            lo, hi = canonical.amin(0), canonical.amax(0)
        self.diagonal = float((hi - lo).norm())
        pad = (hi - lo) * box_padding
        self.box_min, self.box_max = lo - pad, hi + pad

    @torch.no_grad()
    def sample(self, batch, generator=None, params=None):
        """One batch of ``batch`` meshes (or of the given ``params [B, P]``)."""
        flame, device = self.flame, self.canonical_verts.device
        dtype = self.canonical_verts.dtype
        if params is None:
            params = self.distribution.sample(flame.layout, batch, generator, device, dtype)
        params = params.to(device, dtype)
        verts, points, face, bary, canonical = self.surface(params, self.surface_points, generator)
        normals = self.index.surface_normals(verts, face, bary)
        space = self._space_points(verts, self.index.faces(device), generator)
        hit = self.index.correspondence(space, verts, self.canonical_verts, sign=PRIOR_SIGN)
        return SDFBatch(params, flame.head_frame(params), points, normals, canonical, flame.caps.on_cap(face), space,
                        hit.distance, hit.canonical_points, flame.caps.on_cap(hit.face))

    @torch.no_grad()
    def surface(self, params, count, generator=None):
        """The capped posed meshes of ``params`` and ``count`` area-weighted samples on each:
        ``(verts, points, face, bary, canonical points)``."""
        verts = self.flame.caps.verts(self.flame(params))
        faces = self.index.faces(verts.device)
        points, face, bary = surface_samples(verts, faces, count, generator)
        return verts, points, face, bary, barycentric_interpolate(self.canonical_verts, faces, face, bary)

    def _space_points(self, verts, faces, generator):
        B, n = verts.shape[0], self.space_points
        uniform = int(round(n * self.uniform_fraction))
        near = n - uniform
        on, _, _ = surface_samples(verts, faces, near, generator)
        scales = torch.tensor(self.near_scales, dtype=verts.dtype, device=verts.device) * self.diagonal
        sigma = scales[torch.arange(near, device=verts.device) % len(scales)].view(1, -1, 1)
        return torch.cat([jitter(on, sigma, generator), self.box_points(B, uniform, verts, generator)], 1)

    def box_points(self, batch, count, like, generator=None):
        """``[batch, count, 3]`` uniform in the padded box, in the dtype and on the device of
        ``like``."""
        lo, hi = self.box_min.to(like), self.box_max.to(like)
        return lo + torch.rand(batch, count, 3, generator=generator, dtype=like.dtype,
                               device=like.device) * (hi - lo)
