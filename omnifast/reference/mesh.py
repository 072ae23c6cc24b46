"""Brute-force closest points on triangle meshes, in plain PyTorch: every query against every face.

Written independently of the kernels and their thresholds. Everything is computed in float64
(whatever the input dtype) with each face's normal from a double-double cross product
(Dekker's exact products). Per face, the closest point is the best of the three edge segments
and, when the query's foot on the plane falls inside the face, that foot. Whether it falls
inside is decided in float64 where the side tests are clear of their rounding error, and in
exact rational arithmetic for the (rare) query and face pairs where they are not, so a face is
exact however thin it is. Only a face whose cross product is exactly zero has no area and counts
as its three edges. Ties go to the smaller face id, and within a face to its edges and vertices.
Zero-area faces have no side: the pseudonormal sign comes from the nearest face with an area.
A non-finite query, or any query on a mesh with a non-finite vertex, gets NaN and face -1.
"""
import math
from collections import namedtuple
from fractions import Fraction

import torch

ClosestPoint = namedtuple("ClosestPoint", ["distance", "face", "bary", "point"])
SIGNS = ("none", "pseudonormal", "winding")


def _unit(v):
    scale = v.abs().amax(-1, keepdim=True)
    v = v / torch.where(scale > 0, scale, torch.ones_like(scale))
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _two_product(a, b):
    """(p, e) with p + e == a * b exactly (Dekker's splitting, float64)."""
    split = 134217729.0  # 2^27 + 1
    p = a * b
    ca, cb = split * a, split * b
    a_hi, b_hi = ca - (ca - a), cb - (cb - b)
    a_lo, b_lo = a - a_hi, b - b_hi
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def exact_cross(u, v):
    """u x v with each component's two products exact: correct even when they nearly cancel."""
    out = []
    for i, j in ((1, 2), (2, 0), (0, 1)):
        p1, e1 = _two_product(u[..., i], v[..., j])
        p2, e2 = _two_product(u[..., j], v[..., i])
        out.append((p1 - p2) + (e1 - e2))
    return torch.stack(out, -1)


def face_normals(tri):
    """Unit normals of triangles ``[..., 3 corners, 3]`` (float64); zero for zero-area faces."""
    n = exact_cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])
    return torch.where((n != 0).any(-1, keepdim=True), _unit(n), torch.zeros_like(n))


def _segment(p, x, y):
    """Squared distance from p to segment x-y, the weight t of y, and the closest point."""
    e = y - x
    ee = (e * e).sum(-1)
    t = torch.where(ee > 0, ((p - x) * e).sum(-1) / torch.where(ee > 0, ee, torch.ones_like(ee)),
                    torch.zeros_like(ee)).clamp(0, 1)
    q = x + t.unsqueeze(-1) * e
    d = p - q
    return (d * d).sum(-1), t, q


def _closest_on_faces(p, a, b, c, n):
    """p [..., 1, 3] against faces a, b, c [..., F, 3] with unit normals n: squared distance
    [..., F], corner weights [..., F, 3], closest points [..., F, 3], the squared distance to the
    edges alone, and which faces' side tests are within rounding of zero (decide those exactly)."""
    best_sq = best_w = best_q = None
    for k, (x, y) in enumerate(((a, b), (b, c), (c, a))):
        sq, t, q = _segment(p, x, y)
        w = torch.zeros(sq.shape + (3,), dtype=p.dtype, device=p.device)
        w[..., k] = 1 - t
        w[..., (k + 1) % 3] = t
        if best_sq is None:
            best_sq, best_w, best_q = sq, w, q
        else:
            better = sq < best_sq
            best_sq = torch.where(better, sq, best_sq)
            best_w = torch.where(better.unsqueeze(-1), w, best_w)
            best_q = torch.where(better.unsqueeze(-1), q, best_q)
    edge_sq = best_sq
    # Which side of each edge the query's foot on the plane falls on, each edge measured from its
    # own first corner, with a bound on the rounding error of that number.
    side, unsure = [], torch.zeros_like(best_sq, dtype=torch.bool)
    for x, y in ((b, c), (c, a), (a, b)):
        e, xp = y - x, p - x
        side.append((n * torch.linalg.cross(e, xp)).sum(-1))
        unsure |= side[-1].abs() <= 32 * torch.finfo(p.dtype).eps * e.norm(dim=-1) * xp.norm(dim=-1)
    area = (n != 0).any(-1)
    total = side[0] + side[1] + side[2]
    inside = area & (side[0] >= 0) & (side[1] >= 0) & (side[2] >= 0) & (total > 0)
    height = ((p - a) * n).sum(-1)
    plane_sq = height * height
    better = inside & (plane_sq < best_sq)
    weights = torch.stack(side, -1) / torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
    foot = p - height.unsqueeze(-1) * n
    best_sq = torch.where(better, plane_sq, best_sq)
    best_w = torch.where(better.unsqueeze(-1), weights, best_w)
    best_q = torch.where(better.unsqueeze(-1), foot, best_q)
    # A pair matters only if its plane could beat every face's edges.
    unsure &= area & (plane_sq <= edge_sq.amin(-1, keepdim=True))
    return best_sq, best_w, best_q, unsure


def _exact_closest(p, a, b, c):
    """Squared distance, corner weights and closest point of one query and face, in exact
    rational arithmetic (floats in, floats out)."""
    p, a, b, c = ([Fraction(x) for x in v] for v in (p, a, b, c))
    sub = lambda u, v: [u[i] - v[i] for i in range(3)]  # noqa: E731
    dot = lambda u, v: u[0] * v[0] + u[1] * v[1] + u[2] * v[2]  # noqa: E731
    cross = lambda u, v: [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]  # noqa: E731
    corners = (a, b, c)
    best = None
    for k in range(3):
        x, y = corners[k], corners[(k + 1) % 3]
        e = sub(y, x)
        ee = dot(e, e)
        t = min(max(dot(sub(p, x), e) / ee, Fraction(0)), Fraction(1)) if ee else Fraction(0)
        q = [x[i] + t * e[i] for i in range(3)]
        sq = dot(sub(p, q), sub(p, q))
        if best is None or sq < best[0]:
            w = [Fraction(0)] * 3
            w[k], w[(k + 1) % 3] = 1 - t, t
            best = (sq, w, q)
    normal = cross(sub(b, a), sub(c, a))
    nn = dot(normal, normal)
    side = [dot(normal, cross(sub(y, x), sub(p, x))) for x, y in ((b, c), (c, a), (a, b))]
    if nn and min(side) >= 0:
        h = dot(sub(p, a), normal)
        if h * h / nn < best[0]:
            total = sum(side)
            best = (h * h / nn, [s / total for s in side], [p[i] - h / nn * normal[i] for i in range(3)])
    sq, w, q = best
    return float(sq), [float(v) for v in w], [float(v) for v in q]


def vertex_pseudonormals(verts, faces):
    """Angle-weighted vertex normals [B, V, 3] (not normalised) and unit face normals [B, F, 3]
    (float64; zero-area faces contribute nothing)."""
    tri = verts.double()[:, faces]  # [B, F, 3, 3]
    face_n = face_normals(tri)
    vertex_n = torch.zeros(verts.shape, dtype=torch.float64, device=verts.device)
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
    edge_n = torch.zeros(B, edge_keys.numel(), 3, dtype=torch.float64, device=verts.device)
    edge_n.index_add_(1, edge_of, face_n.repeat_interleave(3, dim=1))
    batch = torch.arange(B, device=verts.device).view(-1, 1)
    face = face.clamp_min(0)
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
    tri = verts.double()[:, faces]  # [B, F, 3, 3]
    points = points.double()
    out = []
    for start in range(0, points.shape[1], chunk):
        p = points[:, start:start + chunk, None, :]  # [B, n, 1, 3]
        x, y, z = (tri[:, None, :, k] - p for k in range(3))
        lx, ly, lz = x.norm(dim=-1), y.norm(dim=-1), z.norm(dim=-1)
        num = (x * torch.linalg.cross(y, z)).sum(-1)
        den = lx * ly * lz + (x * y).sum(-1) * lz + (x * z).sum(-1) * ly + (y * z).sum(-1) * lx
        out.append((2 * torch.atan2(num, den)).sum(-1) / (4 * math.pi))
    return torch.cat(out, 1) if out else points.new_zeros(points.shape[:2])


def _nearest(points, verts, faces, normals, with_area_only):
    """Per query: squared distance, face (smallest id of the nearest), weights, closest point."""
    B, N = points.shape[:2]
    a, b, c = (verts[:, faces[:, k]].unsqueeze(1) for k in range(3))  # [B, 1, F, 3]
    n = normals.unsqueeze(1)
    chunk = max(1, (1 << 20) // max(1, B * faces.shape[0]))
    parts = []
    for start in range(0, N, chunk):
        p = points[:, start:start + chunk].unsqueeze(2)  # [B, n, 1, 3]
        sq, w, q, unsure = _closest_on_faces(p, a, b, c, n)
        for i, j, f in unsure.nonzero().tolist():
            sq[i, j, f], w[i, j, f], q[i, j, f] = (torch.tensor(v, dtype=sq.dtype) for v in _exact_closest(
                p[i, j, 0].tolist(), a[i, 0, f].tolist(), b[i, 0, f].tolist(), c[i, 0, f].tolist()))
        if with_area_only:
            sq = torch.where((n != 0).any(-1), sq, torch.full_like(sq, math.inf))
        best_sq, best_face = sq.min(-1)  # the first (smallest id) of equal distances
        pick = best_face[..., None, None].expand(-1, -1, 1, 3)
        parts.append((best_sq, best_face, torch.gather(w, 2, pick)[:, :, 0], torch.gather(q, 2, pick)[:, :, 0]))
    if not parts:
        return (points.new_zeros(B, 0), torch.zeros(B, 0, dtype=torch.long, device=points.device),
                points.new_zeros(B, 0, 3), points.new_zeros(B, 0, 3))
    return tuple(torch.cat(t, 1) for t in zip(*parts))


def closest_point(points, verts, faces, *, sign="pseudonormal"):
    """Brute-force twin of :func:`omnifast.closest_point` (batched ``[B, N, 3]`` / ``[B, V, 3]``),
    returned in the dtype of ``points``."""
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    dtype = points.dtype
    faces = faces.long().to(verts.device)
    points, verts = points.double(), verts.double()
    normals = face_normals(verts[:, faces])  # [B, F, 3]
    sq, face, bary, point = _nearest(points, verts, faces, normals, with_area_only=False)
    distance = sq.sqrt()
    if sign == "pseudonormal":
        has_area = (normals != 0).any(-1)
        side_face, side_bary, side_point = face, bary, point
        if not bool(has_area.all()):
            _, f2, w2, q2 = _nearest(points, verts, faces, normals, with_area_only=True)
            on_area = torch.gather(has_area, 1, face).unsqueeze(-1)
            side_face = torch.where(on_area[..., 0], face, f2)
            side_bary = torch.where(on_area, bary, w2)
            side_point = torch.where(on_area, point, q2)
        inside = ((points - side_point) * _feature_normals(verts, faces, side_face, side_bary)).sum(-1) < 0
        inside &= has_area.any(-1, keepdim=True)
        distance = torch.where(inside, -distance, distance)
    elif sign == "winding":
        distance = torch.where(winding_number(points, verts, faces) > 0.5, -distance, distance)
    finite_mesh = torch.isfinite(verts[:, faces.unique()]).all(-1).all(-1, keepdim=True)
    found = torch.isfinite(points).all(-1) & finite_mesh
    nan = torch.full_like(distance, math.nan)
    return ClosestPoint(torch.where(found, distance, nan).to(dtype),
                        torch.where(found, face, torch.full_like(face, -1)),
                        torch.where(found.unsqueeze(-1), bary, nan.unsqueeze(-1)).to(dtype),
                        torch.where(found.unsqueeze(-1), point, nan.unsqueeze(-1)).to(dtype))


def correspondence(points, verts, canonical_verts, faces, *, sign="pseudonormal"):
    """Brute-force twin of :func:`omnifast.correspondence` (``offset="normal"``, batched inputs):
    ``(canonical points [B, N, 3], signed distance [B, N])``, in the dtype of ``points``."""
    hit = closest_point(points, verts, faces, sign=sign)
    faces = faces.long().to(verts.device)
    canonical = canonical_verts.double().expand(verts.shape[0], -1, -1)
    vertex_n, _ = vertex_pseudonormals(canonical, faces)
    vertex_n = vertex_n / vertex_n.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    batch = torch.arange(verts.shape[0], device=verts.device).view(-1, 1)
    corners = faces[hit.face.clamp_min(0)]  # [B, N, 3]
    bary = hit.bary.double().unsqueeze(-1)
    surface = (canonical[batch.unsqueeze(-1), corners] * bary).sum(-2)
    normal = (vertex_n[batch.unsqueeze(-1), corners] * bary).sum(-2)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    out = surface + hit.distance.double().unsqueeze(-1) * normal
    return out.to(points.dtype), hit.distance
