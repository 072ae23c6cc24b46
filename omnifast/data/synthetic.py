"""A synthetic training set for stage II, made with no download: random FLAME identities,
expressions, jaw and neck poses, cameras from EG3D's FFHQ distribution, a procedural texture
defined in canonical space (so it moves with expressions), random lighting and backgrounds,
rendered by sphere tracing the posed FLAME mesh with omnifast's closest-point kernel."""
import math
from dataclasses import dataclass

import torch

from ..geometry import camera_labels, camera_rays, ffhq_intrinsics, orbit_cam2world, ray_box_intersection
from ..ops.mesh import MeshIndex, barycentric_interpolate
from ..runs import check_fields

# FLAME's 51 static landmarks: 10 brow, 9 nose, 12 eye (6 each), 20 mouth (12 outer lip, 8 inner).
BROWS, NOSE, EYES, OUTER_LIP, INNER_LIP = (range(0, 10), range(10, 19), (range(19, 25), range(25, 31)),
                                           range(31, 43), range(43, 51))


@dataclass
class SceneDistribution:
    """How cameras, lighting and backgrounds are drawn (angles in radians). The cameras are EG3D's
    FFHQ ones: radius 2.7 around the pivot, Gaussian yaw and pitch, focal 4.2647."""
    yaw_std: float = 0.3
    pitch_std: float = 0.12
    radius: float = 2.7
    pivot: tuple = None     # world point the cameras look at (None: the face's centre)

    def __post_init__(self):
        check_fields(self, numbers=[("yaw_std", 0, True), ("pitch_std", 0, True), ("radius", 0, False)])
        pivot = self.pivot
        if pivot is not None and (not isinstance(pivot, (tuple, list)) or len(pivot) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pivot)):
            raise ValueError(f"SceneDistribution: pivot must be None or three finite numbers, got {pivot!r}")


def _segment_distance(points, a, b):
    """Distance from ``points [..., 3]`` to the segments ``a, b [K, 3]``: ``[..., K]``."""
    ab = b - a
    t = (((points.unsqueeze(-2) - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (points.unsqueeze(-2) - (a + t.unsqueeze(-1) * ab)).norm(dim=-1)


def _polyline(landmarks, ids, closed=False):
    ids = list(ids)
    ends = ids[1:] + ids[:1] if closed else ids[1:]
    return landmarks[ids[:len(ends)]], landmarks[ends]


class CanonicalTexture:
    """An albedo defined on canonical points from the canonical landmarks: skin, lips, brows,
    eyes (sclera, iris, pupil), the mouth's inside and a hair cap, with per-identity colours."""

    def __init__(self, landmarks):
        lm = landmarks.double()
        self.eyes = torch.stack([lm[list(e)].mean(0) for e in EYES])  # [2, 3]
        self.eye_radius = float(torch.stack([(lm[list(e)] - c).norm(dim=-1).mean() for e, c in
                                             zip(EYES, self.eyes)]).mean())
        self.unit = float((self.eyes[0] - self.eyes[1]).norm())  # inter-ocular distance
        self.brow_segments = [_polyline(lm, BROWS[:5]), _polyline(lm, BROWS[5:])]
        self.lip_outer = _polyline(lm, OUTER_LIP, closed=True)
        self.mouth = lm[list(INNER_LIP)].mean(0)
        self.mouth_radius = float((lm[list(INNER_LIP)] - self.mouth).norm(dim=-1).mean())
        self.brow_height = float(lm[list(BROWS), 1].mean())
        self.eye_depth = float(self.eyes[:, 2].mean())
        self.nose_height = float(lm[list(NOSE), 1].min())

    @staticmethod
    def identity_colours(batch, generator=None):
        """Per-identity colours ``{name: [B, 3]}`` and the hair line's offset ``[B]``."""
        r = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
        light, dark = torch.tensor([0.93, 0.76, 0.65]), torch.tensor([0.36, 0.23, 0.16])
        tone = r(batch, 1)
        skin = (light + (dark - light) * tone).double() * (0.92 + 0.16 * r(batch, 3))
        hair_palette = torch.tensor([[0.08, 0.06, 0.05], [0.30, 0.18, 0.09], [0.75, 0.6, 0.35], [0.5, 0.15, 0.07]])
        hair = hair_palette.double()[torch.randint(0, 4, (batch,), generator=generator)] * (0.8 + 0.4 * r(batch, 1))
        iris_palette = torch.tensor([[0.25, 0.15, 0.08], [0.2, 0.35, 0.55], [0.25, 0.4, 0.25]])
        iris = iris_palette.double()[torch.randint(0, 3, (batch,), generator=generator)]
        lips = skin * torch.tensor([0.85, 0.5, 0.5]).double() * (0.9 + 0.2 * r(batch, 1))
        return {"skin": skin, "hair": hair.clamp(0, 1), "iris": iris, "lips": lips,
                "hairline": (r(batch) - 0.5) * 0.4}

    def albedo(self, points, colours):
        """``points [B, N, 3]`` canonical (metres) -> ``[B, N, 3]`` RGB in [0, 1]."""
        p, u = points.double(), self.unit
        colour = colours["skin"][:, None, :].expand_as(p).clone()
        # A little mottling so the skin is not flat.
        colour = colour * (1 + 0.04 * torch.sin(p[..., :1] * 90 / u) * torch.sin(p[..., 1:2] * 70 / u))

        def paint(mask, value):
            nonlocal colour
            colour = torch.where(mask.unsqueeze(-1), value.to(colour.device).expand_as(colour), colour)

        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        hairline = self.brow_height + (0.3 + colours["hairline"][:, None]) * u
        back = z < self.eye_depth - 1.5 * u
        sides = (x.abs() > 1.2 * u) & (y > self.eyes[0, 1] - 0.2 * u)
        paint((y > hairline) | sides | (back & (y > self.nose_height - 0.3 * u)), colours["hair"][:, None, :])
        lip = _segment_distance(p, *self.lip_outer).amin(-1) < 0.06 * u
        inside = (p - self.mouth).norm(dim=-1) < self.mouth_radius
        paint(lip | inside, colours["lips"][:, None, :])
        paint((p - self.mouth).norm(dim=-1) < 0.6 * self.mouth_radius, torch.tensor([0.25, 0.05, 0.06]).double())
        for a, b in self.brow_segments:
            paint(_segment_distance(p, a, b).amin(-1) < 0.07 * u, colours["hair"][:, None, :] * 0.8)
        for eye in self.eyes:
            d = (p - eye).norm(dim=-1) / self.eye_radius
            paint(d < 0.95, torch.tensor([0.92, 0.9, 0.88]).double())
            paint(d < 0.55, colours["iris"][:, None, :])
            paint(d < 0.25, torch.tensor([0.03, 0.03, 0.03]).double())
        return colour.clamp(0, 1)


def sphere_trace(bvh, origins, directions, near, far, footprint, steps=48):
    """First hits of rays on one mesh through its closest-point tree: ``(hit [R] bool, face [R],
    bary [R, 3], coverage [R])``. A ray that misses keeps the closest point it passed and a
    coverage that falls from 1 to 0 over one pixel's footprint (soft silhouettes)."""
    R, device = origins.shape[0], origins.device
    t = near.clone()
    active = far > near
    face = torch.full((R,), -1, dtype=torch.long, device=device)
    bary = torch.zeros(R, 3, dtype=origins.dtype, device=device)
    hit = torch.zeros(R, dtype=torch.bool, device=device)
    closest = torch.full((R,), math.inf, dtype=origins.dtype, device=device)
    for _ in range(steps):
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        q = bvh.closest_point(origins[idx] + t[idx, None] * directions[idx])
        s = q.distance.abs()
        ratio = s / (footprint * t[idx])
        better = ratio < closest[idx]
        closest[idx] = torch.where(better, ratio, closest[idx])
        face[idx] = torch.where(better, q.face, face[idx])
        bary[idx] = torch.where(better[:, None], q.bary, bary[idx])
        done = s < 0.05 * footprint * t[idx]
        hit[idx[done]] = True
        t[idx] = t[idx] + s.clamp_min(0.01 * footprint * t[idx])
        active[idx] = ~done & (t[idx] < far[idx])
    coverage = torch.where(hit, torch.ones_like(closest), (1 - closest).clamp(0, 1))
    return hit, face, bary, coverage


class SyntheticHeads:
    """Renders synthetic training images of a FLAME model (real or synthetic).

    Args:
        flame: :class:`omnifast.flame.Flame`.
        centre, world_scale: the world frame (:func:`omnifast.render.warp.world_frame`).
        params: :class:`omnifast.sdf.data.ParamDistribution` for identities and expressions.
        scene: :class:`SceneDistribution`.
    The random draws come from a CPU generator, so a dataset is the same on any device; the
    FLAME model's device is where the rendering runs.
    """

    def __init__(self, flame, centre, world_scale, params=None, scene=None):
        from ..sdf.data import ParamDistribution

        self.flame, self.centre, self.world_scale = flame, centre.double(), float(world_scale)
        self.params, self.scene = params or ParamDistribution(), scene or SceneDistribution()
        self.index = MeshIndex(flame.caps.faces)
        with torch.no_grad():
            self.canonical_verts = flame.caps.verts(flame.canonical_verts()).double()
            landmarks = flame.landmarks(flame.canonical_params.unsqueeze(0))[0]
        self.texture = CanonicalTexture(landmarks)
        face_centre = (landmarks.double().mean(0) - self.centre) * self.world_scale
        self.pivot = tuple(float(v) for v in (face_centre if self.scene.pivot is None else self.scene.pivot))

    @torch.no_grad()
    def render(self, count, resolution, generator=None):
        """``(images uint8 [count, 3, R, R], labels float32 [count, 25 + P])``."""
        layout, device = self.flame.layout, self.flame.canonical_params.device
        params = self.params.sample(layout, count, generator, dtype=torch.float32)
        s = self.scene
        cam2world = orbit_cam2world(math.pi / 2, math.pi / 2, s.radius, self.pivot, yaw_std=s.yaw_std,
                                    pitch_std=s.pitch_std, batch=count, generator=generator)
        intrinsics = ffhq_intrinsics()
        labels = torch.cat([camera_labels(cam2world, intrinsics), params], -1)
        origins, directions = camera_rays(cam2world.double().to(device),
                                          intrinsics.double().to(device).expand(count, 3, 3), resolution)
        origins = origins / self.world_scale + self.centre.to(device)  # FLAME's metres; directions stay unit
        verts = self.flame.caps.verts(self.flame(params.to(device))).double()
        colours = {k: v.to(device) for k, v in self.texture.identity_colours(count, generator).items()}
        footprint = 1.0 / (float(intrinsics[0, 0]) * resolution)  # a pixel's width per unit of depth
        g = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64).to(device)  # noqa: E731
        images = torch.empty(count, resolution * resolution, 3, dtype=torch.float64, device=device)
        rows = torch.linspace(0, 1, resolution, dtype=torch.float64, device=device).repeat_interleave(resolution)
        rows = rows[:, None]
        for n in range(count):
            bvh = self.index.build(verts[n])
            lo, hi = verts[n].amin(0) - 0.01, verts[n].amax(0) + 0.01
            near, far = ray_box_intersection(origins[n], directions[n], lo, hi)
            hit, face, bary, coverage = sphere_trace(bvh, origins[n], directions[n], near, far, footprint)
            top, bottom = g(3), g(3)
            background = top + (bottom - top) * rows
            seen = face >= 0
            colour = background.clone()
            if seen.any():
                f, b = face[seen], bary[seen]
                canonical = barycentric_interpolate(self.canonical_verts.to(device), self.index.faces(device), f, b)
                albedo = self.texture.albedo(canonical.unsqueeze(0), {k: v[n:n + 1] for k, v in colours.items()})[0]
                normal = self.index.surface_normals(verts[n], f, b)
                # Towards the light, in the camera's frame (x right, y down, z forward): in front, above.
                light = torch.cat([g(1) - 0.5, -(0.3 + 0.5 * g(1)), -torch.ones(1, dtype=torch.float64, device=device)])
                light_world = torch.nn.functional.normalize(light, dim=0) @ cam2world[n, :3, :3].double().to(device).T
                lambert = (normal @ light_world).clamp_min(0)
                shade = (0.35 + 0.15 * g(1)) + (0.7 + 0.2 * g(1)) * lambert
                surface = albedo * shade.unsqueeze(-1) * (0.9 + 0.2 * g(1, 3))
                a = coverage[seen].unsqueeze(-1)
                colour[seen] = a * surface + (1 - a) * background[seen]
            images[n] = colour
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return images.reshape(count, resolution, resolution, 3).permute(0, 3, 1, 2).cpu().contiguous(), labels
