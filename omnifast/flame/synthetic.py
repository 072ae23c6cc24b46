"""A synthetic FLAME-format model: a procedurally built head with FLAME's size and topology traits
(about 5,000 vertices, open at the neck, the eyes and the mouth, a hinged jaw), 300 shape and 100
expression blendshapes, pose correctives, FLAME's five joints with skinning weights and a static
landmark embedding, written in the file layout ``smplx.FLAME`` reads. FLAME itself is licensed and
not shipped; tests and the demo use this model, and a user's real files load the same way."""
import math
import os
import pickle

import numpy as np
import torch

from ..geometry import head_mesh
from ..runs import atomic_write
from .model import boundary_loops

RINGS, SEGMENTS = 70, 72
THETA_MAX = 0.82 * math.pi          # head_mesh stops here (the neck opening)
MOUTH_THETA = math.acos(-0.40)      # latitude of the mouth slit
MOUTH_HALF_WIDTH = 0.27             # radians of longitude either side of the midline
EYE_CENTRE = (0.36, 0.13)           # direction-space (|x|, y) of the eye holes
EYE_RADII = (0.105, 0.05)


def _smoothstep(lo, hi, x):
    t = ((x - lo) / (hi - lo)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _grid_angles():
    """Latitude and longitude (wrapped to [-pi, pi)) of every head_mesh vertex; vertex 0 is the
    top pole."""
    theta = torch.linspace(0, 1, RINGS + 1, dtype=torch.float64)[1:] * THETA_MAX
    phi = torch.arange(SEGMENTS, dtype=torch.float64) * (2 * math.pi / SEGMENTS)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    theta = torch.cat([torch.zeros(1, dtype=torch.float64), t.reshape(-1)])
    phi = torch.cat([torch.zeros(1, dtype=torch.float64), p.reshape(-1)])
    return theta, torch.remainder(phi + math.pi, 2 * math.pi) - math.pi


def _directions(theta, phi):
    return torch.stack([torch.sin(theta) * torch.sin(phi), torch.cos(theta),
                        torch.sin(theta) * torch.cos(phi)], -1)


def _bump(direction, centre, width):
    centre = torch.tensor(centre, dtype=torch.float64)
    centre = centre / centre.norm()
    return torch.exp(-((direction - centre) ** 2).sum(-1) / (2 * width ** 2))


def _template():
    """Vertices, faces and per-vertex (theta, phi, direction) of the head with its holes cut."""
    verts, faces = head_mesh(RINGS, SEGMENTS)
    theta, phi = _grid_angles()
    u = _directions(theta, phi)
    radial = verts / verts.norm(dim=-1, keepdim=True)
    ex, ey = EYE_CENTRE
    socket = sum(_bump(u, [s * ex, ey, 1.0], 0.09) for s in (-1, 1))
    chin = _bump(u, [0, -0.62, 0.78], 0.13)
    lips = _bump(u, [0, -0.40, 0.92], 0.08)
    verts = verts + radial * (-0.006 * socket + 0.008 * chin + 0.004 * lips).unsqueeze(-1)
    # A neck below the skull: lower rings are drawn towards a tube that ends 0.17 m down.
    front = phi.cos().clamp_min(0)
    start = 0.66 * math.pi + 0.07 * math.pi * front
    t = _smoothstep(start, torch.full_like(start, THETA_MAX), theta)
    tube = torch.stack([0.052 * phi.sin(), verts[:, 1] - 0.09 * t, 0.052 * phi.cos() - 0.012], -1)
    verts = torch.lerp(verts, tube, (t ** 0.7).unsqueeze(-1))

    # Holes: faces whose corners all lie in an eye ellipse, and the quads of the mouth slit.
    ring = torch.cat([torch.tensor([-1]), torch.arange(RINGS).repeat_interleave(SEGMENTS)])
    mouth_ring = int(round(MOUTH_THETA / THETA_MAX * RINGS)) - 1
    fu = u[faces].mean(1)
    in_eye = (((fu[:, 0].abs() - ex) / EYE_RADII[0]) ** 2 + ((fu[:, 1] - ey) / EYE_RADII[1]) ** 2 < 1) \
        & (fu[:, 2] > 0)
    fphi = torch.atan2(fu[:, 0], fu[:, 2])
    rings_of_face = ring[faces]
    in_mouth = (rings_of_face.min(1).values == mouth_ring) & (rings_of_face.max(1).values == mouth_ring + 1) \
        & (fphi.abs() < MOUTH_HALF_WIDTH)
    faces = faces[~(in_eye | in_mouth)]
    used = torch.unique(faces)
    remap = torch.full((verts.shape[0],), -1, dtype=torch.long)
    remap[used] = torch.arange(used.numel())
    return verts[used], remap[faces], theta[used], phi[used], u[used], ring[used], mouth_ring


def _smooth_field(u, rng, frequency, terms=3):
    """A smooth scalar field on directions, mirror-symmetric in x."""
    mirrored = u * torch.tensor([-1.0, 1.0, 1.0], dtype=u.dtype)
    out = torch.zeros(u.shape[0], dtype=u.dtype)
    for _ in range(terms):
        d = torch.from_numpy(rng.normal(size=3))
        d = d / d.norm()
        phase = float(rng.uniform(0, 2 * math.pi))
        out += torch.sin(frequency * (u @ d) + phase) + torch.sin(frequency * (mirrored @ d) + phase)
    return out / (2 * math.sqrt(terms))


def _vertex_normals(verts, faces):
    from ..ops.mesh import MeshIndex

    return MeshIndex(faces).vertex_normals(verts)


def _skinning(theta, phi, ring, mouth_ring):
    """FLAME's five joints (global, neck, jaw, left eye, right eye): the lower neck follows the
    global joint, the head the neck joint, the chin and lower lip the jaw. No vertex follows the
    eyes (the model has no eyeballs)."""
    head = 1 - _smoothstep(0.70 * math.pi, 0.80 * math.pi, theta)
    front = 1 - _smoothstep(0.9, 1.5, phi.abs())
    below = (ring > mouth_ring).double()
    # Beside the slit the cheek blends from the jaw into the face instead of tearing.
    beside = _smoothstep(MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH + 0.3, phi.abs()) \
        * torch.exp(-((MOUTH_THETA - theta) / 0.12) ** 2)
    jaw = front * torch.maximum(below, beside) * (1 - _smoothstep(0.72 * math.pi, 0.79 * math.pi, theta))
    weights = torch.zeros(theta.shape[0], 5, dtype=torch.float64)
    weights[:, 0] = 1 - head
    weights[:, 1] = head * (1 - jaw)
    weights[:, 2] = head * jaw
    return weights


def _joint_regressor(verts, theta, u, faces):
    """Rows that average vertex sets, so joints follow the shape blendshapes as FLAME's do."""
    def mean_of(index):  # a boolean mask or a list of vertex ids
        row = torch.zeros(verts.shape[0], dtype=torch.float64)
        row[index] = 1.0
        return row / row.sum()

    rings = torch.unique(theta)
    bottom = theta == rings[-1]
    neck_ring = theta == rings[(rings - 0.70 * math.pi).abs().argmin()]
    jaw = sum(_bump(u, [s * 0.95, -0.28, 0.05], 0.12) > 0.6 for s in (-1, 1)) > 0
    ex, ey = EYE_CENTRE
    eye_loops = {}
    for loop in boundary_loops(faces, verts.shape[0]):
        x, y, z = u[loop].mean(0).tolist()
        if z > 0 and abs(abs(x) - ex) < EYE_RADII[0] and abs(y - ey) < EYE_RADII[1]:
            eye_loops[1 if x > 0 else -1] = loop
    rows = [mean_of(bottom), mean_of(neck_ring), mean_of(jaw), mean_of(eye_loops[1]), mean_of(eye_loops[-1])]
    return torch.stack(rows)


def _shape_dirs(verts, normals, u, rng):
    """300 identity components: smooth symmetric displacements, mostly along the normal, of
    decreasing size (the first about 6 mm at one standard deviation)."""
    dirs = torch.zeros(verts.shape[0], 3, 300, dtype=torch.float64)
    centred = verts - verts.mean(0)
    dirs[:, :, 0] = centred * 0.05                                   # overall size
    dirs[:, :, 1] = centred * torch.tensor([0.0, 0.06, 0.0], dtype=torch.float64)  # face length
    dirs[:, :, 2] = centred * torch.tensor([0.07, 0.0, 0.0], dtype=torch.float64)  # width
    for k in range(3, 300):
        amplitude = 0.006 / (1 + k / 6)
        field = _smooth_field(u, rng, 1.5 + 0.05 * k)
        tangent = _smooth_field(u, rng, 1.0 + 0.03 * k) * 0.3
        along = normals * field.unsqueeze(-1)
        side = torch.linalg.cross(normals, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(normals))
        dirs[:, :, k] = amplitude * (along + side * tangent.unsqueeze(-1))
    return dirs


def _expression_dirs(verts, normals, u, jaw_weight, rng):
    """100 expression components on the face (mouth, cheeks, brows, eyelids): a few named
    movements first, then local symmetric bumps of decreasing size."""
    face = _smoothstep(-0.1, 0.4, u[:, 2]) * (1 - _smoothstep(0.45, 0.6, u[:, 1]))
    dirs = torch.zeros(verts.shape[0], 3, 100, dtype=torch.float64)

    def pair(centre, width, move):
        x, y, z = centre
        total = torch.zeros_like(verts)
        for s in (-1, 1):
            total += _bump(u, [s * x, y, z], width).unsqueeze(-1) * torch.tensor(
                [s * move[0], move[1], move[2]], dtype=torch.float64)
        return total

    mouth = [math.sin(MOUTH_HALF_WIDTH) * 0.92, -0.40, 0.92]
    dirs[:, :, 0] = jaw_weight.unsqueeze(-1) * torch.tensor([0.0, -0.006, 0.002], dtype=torch.float64)
    dirs[:, :, 1] = pair(mouth, 0.10, (0.003, 0.004, -0.002))              # smile
    dirs[:, :, 2] = pair([0.3, 0.33, 0.9], 0.14, (0.0, 0.005, 0.001))     # brow raise
    dirs[:, :, 3] = _bump(u, [0, -0.40, 0.92], 0.12).unsqueeze(-1) * torch.tensor(
        [0.0, 0.0, 0.005], dtype=torch.float64)                             # pucker
    dirs[:, :, 4] = pair([0.55, -0.2, 0.8], 0.15, (0.0, 0.0, 0.0)) + normals * pair(
        [0.55, -0.2, 0.8], 0.15, (0.0, 0.004, 0.0))[:, 1:2]               # cheek puff
    for k in range(5, 100):
        amplitude = 0.004 / (1 + k / 10)
        centre = [abs(rng.normal(0.25, 0.2)), rng.uniform(-0.55, 0.4), 0.9]
        move = rng.normal(size=3) * 0.4
        width = rng.uniform(0.08, 0.25)
        along = normals * pair(centre, width, (0.0, 1.0, 0.0))[:, 1:2]
        dirs[:, :, k] = amplitude * (along + pair(centre, width, tuple(move)))
    return dirs * face.view(-1, 1, 1)


def _pose_dirs(u, weights, rng):
    """Pose correctives [V, 3, 36] (FLAME's layout: the 9 entries of R - I for neck, jaw and the
    two eyes): small smooth bulges where the neck and the jaw skinning blend."""
    dirs = torch.zeros(u.shape[0], 3, 36, dtype=torch.float64)
    blends = [4 * weights[:, 0] * (1 - weights[:, 0]), 4 * weights[:, 2] * (1 - weights[:, 2])]
    for joint, region in enumerate(blends):
        for entry in range(9):
            field = torch.stack([_smooth_field(u, rng, 2.0) for _ in range(3)], -1)
            dirs[:, :, 9 * joint + entry] = 0.008 * region.unsqueeze(-1) * field
    return dirs


def _landmarks(verts, faces, u):
    """FLAME's 51 static landmarks (10 brow, 9 nose, 12 eye, 20 mouth) as faces and barycentric
    coordinates: the template points closest to targets on the head's surface in each landmark's
    direction (the surface radius of the vertex whose direction is nearest)."""
    from ..ops.mesh import closest_point

    ex, ey = EYE_CENTRE
    targets = [(s * x, 0.30 + 0.05 * math.cos(x * 4)) for s in (-1, 1) for x in np.linspace(0.12, 0.5, 5)]
    targets += [(0.0, y) for y in np.linspace(0.10, -0.06, 4)] + [(x, -0.16) for x in np.linspace(-0.09, 0.09, 5)]
    targets += [(s * ex + EYE_RADII[0] * 1.2 * math.cos(a), ey + EYE_RADII[1] * 1.3 * math.sin(a))
                for s in (-1, 1) for a in np.linspace(0, 2 * math.pi, 7)[:-1]]
    targets += [(0.30 * math.cos(a), -0.40 + 0.12 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 13)[:-1]]
    targets += [(0.2 * math.cos(a), -0.40 + 0.035 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 9)[:-1]]
    xy = torch.tensor(targets, dtype=torch.float64)
    direction = torch.cat([xy, (1 - (xy ** 2).sum(-1, keepdim=True)).clamp_min(0).sqrt()], -1)
    radius = verts.norm(dim=-1)[(direction @ u.T).argmax(-1)]
    hit = closest_point(radius.unsqueeze(-1) * direction, verts, faces, sign="none")
    return hit.face.numpy(), hit.bary.numpy()


def make_synthetic_flame(out_dir, seed=0):
    """Write ``FLAME_NEUTRAL.pkl`` and ``flame_static_embedding.pkl`` into ``out_dir``.

    Returns:
        The two paths written.
    """
    rng = np.random.default_rng(seed)
    verts, faces, theta, phi, u, ring, mouth_ring = _template()
    normals = _vertex_normals(verts, faces)
    weights = _skinning(theta, phi, ring, mouth_ring)
    model = {
        "v_template": verts.numpy(),
        "f": faces.numpy().astype(np.uint32),
        "shapedirs": torch.cat([_shape_dirs(verts, normals, u, rng),
                                _expression_dirs(verts, normals, u, weights[:, 2], rng)], -1).numpy(),
        "posedirs": _pose_dirs(u, weights, rng).numpy(),
        "J_regressor": _joint_regressor(verts, theta, u, faces).numpy(),
        "weights": weights.numpy(),
        "kintree_table": np.array([[2 ** 32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    lmk_face, lmk_bary = _landmarks(verts, faces, u)
    embedding = {"lmk_face_idx": lmk_face.astype(np.uint32), "lmk_b_coords": lmk_bary}
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, content in (("FLAME_NEUTRAL.pkl", model), ("flame_static_embedding.pkl", embedding)):
        path = os.path.join(out_dir, name)
        atomic_write(path, lambda f, content=content: pickle.dump(content, f, protocol=4))
        paths.append(path)
    return paths
