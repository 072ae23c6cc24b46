"""Brute-force closest points on triangle meshes, in plain PyTorch: every query against every face.

Written independently of the kernel's region test: per face, the closest point is the best of
the three edge segments and the in-plane projection (when it lands inside the face). A face whose
area is lost to rounding (squared double area <= rounding unit x longest edge^4) is just its edges.
Ties go to the smaller face id, and within a face to its edges and vertices.
"""
import math

import torch

from ..ops.mesh import ClosestPoint, SIGNS


def _unit(v):
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _segment(p, x, y):
    """Squared distance from p to segment x-y and the weight t of y."""
    e = y - x
    ee = (e * e).sum(-1)
    t = torch.where(ee > 0, ((p - x) * e).sum(-1) / torch.where(ee > 0, ee, torch.ones_like(ee)),
                    torch.zeros_like(ee)).clamp(0, 1)
    d = p - x - t.unsqueeze(-1) * e
    return (d * d).sum(-1), t


def _closest_on_faces(p, a, b, c):
    """p [..., 1, 3] against faces a, b, c [..., F, 3]: squared distance [..., F], weights [..., F, 3]."""
    best_sq = None
    for k, (x, y) in enumerate(((a, b), (b, c), (c, a))):
        sq, t = _segment(p, x, y)
        w = torch.zeros(sq.shape + (3,), dtype=p.dtype, device=p.device)
        w[..., k] = 1 - t
        w[..., (k + 1) % 3] = t
        if best_sq is None:
            best_sq, best_w = sq, w
        else:
            better = sq < best_sq
            best_sq = torch.where(better, sq, best_sq)
            best_w = torch.where(better.unsqueeze(-1), w, best_w)
    n = torch.linalg.cross(b - a, c - a)
    nn = (n * n).sum(-1)
    longest = torch.stack([((b - a) ** 2).sum(-1), ((c - a) ** 2).sum(-1), ((c - b) ** 2).sum(-1)]).amax(0)
    solid = nn > torch.finfo(p.dtype).eps * longest * longest
    safe_nn = torch.where(solid, nn, torch.ones_like(nn))
    height = ((p - a) * n).sum(-1) / safe_nn
    q = p - height.unsqueeze(-1) * n
    wa = (n * torch.linalg.cross(b - q, c - q)).sum(-1) / safe_nn
    wb = (n * torch.linalg.cross(c - q, a - q)).sum(-1) / safe_nn
    wc = 1 - wa - wb
    inside = solid & (wa >= 0) & (wb >= 0) & (wc >= 0)
    plane_sq = height * height * nn
    better = inside & (plane_sq < best_sq)
    best_sq = torch.where(better, plane_sq, best_sq)
    best_w = torch.where(better.unsqueeze(-1), torch.stack([wa, wb, wc], -1), best_w)
    return best_sq, best_w


def vertex_pseudonormals(verts, faces):
    """Angle-weighted vertex normals [B, V, 3] (not normalised) and unit face normals [B, F, 3]."""
    tri = verts[:, faces]  # [B, F, 3, 3]
    face_n = _unit(torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]))
    vertex_n = torch.zeros_like(verts)
    for k in range(3):
        e1 = tri[:, :, (k + 1) % 3] - tri[:, :, k]
        e2 = tri[:, :, (k + 2) % 3] - tri[:, :, k]
        angle = torch.atan2(torch.linalg.cross(e1, e2).norm(dim=-1), (e1 * e2).sum(-1))
        vertex_n.index_add_(1, faces[:, k], angle.unsqueeze(-1) * face_n)
    return vertex_n, face_n


def _feature_normals(verts, faces, face, bary):
    """Pseudonormal of the face, edge or vertex holding each closest point (zero weights say which)."""
    B, V = verts.shape[:2]
    vertex_n, face_n = vertex_pseudonormals(verts, faces)
    pairs = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    keys = pairs.min(1).values * V + pairs.max(1).values
    edge_keys, edge_of = torch.unique(keys, return_inverse=True)
    edge_n = torch.zeros(B, edge_keys.numel(), 3, dtype=verts.dtype, device=verts.device)
    edge_n.index_add_(1, edge_of, face_n.repeat_interleave(3, dim=1))
    batch = torch.arange(B, device=verts.device).view(-1, 1)
    corners = faces[face]  # [B, N, 3]
    zero = bary == 0
    normal = face_n[batch, face]
    for k in range(3):  # one zero weight: the edge of the other two corners
        i, j = corners[..., (k + 1) % 3], corners[..., (k + 2) % 3]
        edge = torch.searchsorted(edge_keys, torch.minimum(i, j) * V + torch.maximum(i, j))
        one_zero = zero[..., k] & (zero.sum(-1) == 1)
        normal = torch.where(one_zero.unsqueeze(-1), edge_n[batch, edge.clamp_max(edge_keys.numel() - 1)], normal)
    vertex = torch.gather(corners, -1, bary.argmax(-1, keepdim=True))[..., 0]
    return torch.where((zero.sum(-1) == 2).unsqueeze(-1), vertex_n[batch, vertex], normal)


def winding_number(points, verts, faces, chunk=256):
    """Exact generalised winding number [B, N]: the sum of every face's solid angle over 4 pi."""
    tri = verts[:, faces]  # [B, F, 3, 3]
    out = []
    for start in range(0, points.shape[1], chunk):
        p = points[:, start:start + chunk, None, :]  # [B, n, 1, 3]
        x, y, z = (tri[:, None, :, k] - p for k in range(3))
        lx, ly, lz = x.norm(dim=-1), y.norm(dim=-1), z.norm(dim=-1)
        num = (x * torch.linalg.cross(y, z)).sum(-1)
        den = lx * ly * lz + (x * y).sum(-1) * lz + (x * z).sum(-1) * ly + (y * z).sum(-1) * lx
        out.append((2 * torch.atan2(num, den)).sum(-1) / (4 * math.pi))
    return torch.cat(out, 1) if out else points.new_zeros(points.shape[:2])


def closest_point(points, verts, faces, *, sign="pseudonormal"):
    """Brute-force twin of :func:`omnifast.closest_point` (batched ``[B, N, 3]`` / ``[B, V, 3]``)."""
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {tuple(SIGNS)}, got {sign!r}")
    faces = faces.long().to(verts.device)
    B, N = points.shape[:2]
    a, b, c = (verts[:, faces[:, k]].unsqueeze(1) for k in range(3))  # [B, 1, F, 3]
    chunk = max(1, (1 << 20) // max(1, B * faces.shape[0]))
    sq_parts, face_parts, w_parts = [], [], []
    for start in range(0, N, chunk):
        p = points[:, start:start + chunk].unsqueeze(2)  # [B, n, 1, 3]
        sq, w = _closest_on_faces(p, a, b, c)
        best_sq, best_face = sq.min(-1)  # the first (smallest id) of equal distances
        sq_parts.append(best_sq)
        face_parts.append(best_face)
        w_parts.append(torch.gather(w, 2, best_face[..., None, None].expand(-1, -1, 1, 3))[:, :, 0])
    sq = torch.cat(sq_parts, 1) if sq_parts else points.new_zeros(B, 0)
    face = torch.cat(face_parts, 1) if face_parts else torch.zeros(B, 0, dtype=torch.long, device=points.device)
    bary = torch.cat(w_parts, 1) if w_parts else points.new_zeros(B, 0, 3)
    corners = verts[torch.arange(B, device=verts.device).view(-1, 1, 1), faces[face]]  # [B, N, 3, 3]
    point = (bary.unsqueeze(-1) * corners).sum(-2)
    distance = sq.sqrt()
    if sign == "pseudonormal":
        inside = ((points - point) * _feature_normals(verts, faces, face, bary)).sum(-1) < 0
        distance = torch.where(inside, -distance, distance)
    elif sign == "winding":
        distance = torch.where(winding_number(points, verts, faces) > 0.5, -distance, distance)
    return ClosestPoint(distance, face, bary, point)
