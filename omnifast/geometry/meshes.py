"""Meshes and points on them: a procedural head-sized mesh, posed copies, area-weighted surface
samples, Gaussian jitter, and query points drawn the way semantic-SDF training draws them."""
import math

import torch


def head_mesh(rings=70, segments=72, dtype=torch.float64):
    """A head-sized (about 0.2 m tall) closed-top surface open at the neck, FLAME's size by
    default (5041 vertices, 10008 faces): a latitude-longitude grid on an egg-shaped ellipsoid
    with a nose, brow and ears pushed out. Faces are outward (counter-clockwise seen from outside).

    Returns:
        ``(verts [V, 3], faces [F, 3] int64)``.
    """
    theta = torch.linspace(0, 1, rings + 1, dtype=dtype)[1:] * (0.82 * math.pi)  # stop at the neck
    phi = torch.arange(segments, dtype=dtype) * (2 * math.pi / segments)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    direction = torch.stack([torch.sin(t) * torch.sin(p), torch.cos(t), torch.sin(t) * torch.cos(p)], -1)
    radius = torch.tensor([0.078, 0.105, 0.095], dtype=dtype) * (1 + 0.08 * torch.cos(t).unsqueeze(-1))

    def bump(centre, width, height):
        centre = torch.tensor(centre, dtype=dtype)
        centre = centre / centre.norm()
        return height * torch.exp(-((direction - centre) ** 2).sum(-1) / (2 * width ** 2))

    scale = 1 + bump([0, -0.1, 1], 0.12, 0.22) + bump([0, 0.35, 1], 0.25, 0.05) \
        + bump([1, -0.05, 0], 0.12, 0.12) + bump([-1, -0.05, 0], 0.12, 0.12)
    grid = direction * radius * scale.unsqueeze(-1)
    verts = torch.cat([torch.tensor([[0, 0.105 * 1.08, 0]], dtype=dtype), grid.reshape(-1, 3)])
    ring = lambda r, s: 1 + r * segments + s % segments  # noqa: E731
    faces = [[0, ring(0, s), ring(0, s + 1)] for s in range(segments)]
    for r in range(rings - 1):
        for s in range(segments):
            faces.append([ring(r, s), ring(r + 1, s), ring(r, s + 1)])
            faces.append([ring(r, s + 1), ring(r + 1, s), ring(r + 1, s + 1)])
    return verts, torch.tensor(faces, dtype=torch.long)


def posed_batch(verts, batch, generator=None, amount=0.01):
    """``batch`` differently posed copies ``[B, V, 3]``: a smooth random displacement field of
    about ``amount`` metres plus a small random rotation each."""
    out = []
    for _ in range(batch):
        k = torch.randn(3, 3, generator=generator, dtype=verts.dtype) * 8
        phase = torch.rand(3, generator=generator, dtype=verts.dtype) * 2 * math.pi
        wave = torch.sin(verts @ k + phase) * amount
        angle = (torch.rand(3, generator=generator, dtype=verts.dtype) - 0.5) * 0.3
        cx, cy, cz = torch.cos(angle)
        sx, sy, sz = torch.sin(angle)
        rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=verts.dtype)
        ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=verts.dtype)
        rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=verts.dtype)
        out.append((verts + wave) @ (rz @ ry @ rx).T)
    return torch.stack(out)


def surface_samples(verts, faces, count, generator=None):
    """Area-weighted uniform samples on each mesh ``[B, count, 3]`` with their faces and weights."""
    tri = verts[:, faces]  # [B, F, 3, 3]
    area = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]).norm(dim=-1)
    face = torch.multinomial(area, count, replacement=True, generator=generator)  # [B, count]
    u, v = torch.rand(2, verts.shape[0], count, 1, generator=generator, dtype=verts.dtype, device=verts.device)
    flip = (u + v) > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    bary = torch.cat([1 - u - v, u, v], -1)
    chosen = tri[torch.arange(verts.shape[0], device=verts.device).view(-1, 1), face]  # [B, count, 3, 3]
    return (bary.unsqueeze(-1) * chosen).sum(-2), face, bary


def jitter(points, sigma, generator=None):
    """``points`` moved by Gaussian noise of standard deviation ``sigma`` (broadcast to them)."""
    return points + torch.randn(points.shape, generator=generator, dtype=points.dtype,
                                device=points.device) * sigma


def training_points(verts, faces, count, generator=None, near_fraction=0.7):
    """Queries as semantic-SDF training draws them: ``near_fraction`` near the surface (surface
    samples plus Gaussian noise of 1% and 5% of the box diagonal, half each), the rest uniform in
    the box enlarged by 10%."""
    B = verts.shape[0]
    lo, hi = verts.amin(1, keepdim=True), verts.amax(1, keepdim=True)
    diag = (hi - lo).norm(dim=-1, keepdim=True)
    near = int(count * near_fraction)
    near_pts = verts.new_zeros(B, 0, 3)
    if near > 0:
        on, _, _ = surface_samples(verts, faces, near, generator)
        sigma = torch.where(torch.arange(near).view(1, -1, 1) % 2 == 0, 0.01, 0.05).to(verts.dtype) * diag
        near_pts = jitter(on, sigma, generator)
    centre, half = (lo + hi) / 2, (hi - lo) * 0.55
    box = centre + (torch.rand(B, count - near, 3, generator=generator, dtype=verts.dtype) * 2 - 1) * half
    pts = torch.cat([near_pts, box], 1)
    return pts[:, torch.randperm(count, generator=generator)]
