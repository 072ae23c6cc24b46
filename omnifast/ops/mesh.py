"""Closest points on batches of triangle meshes that share one face list, the barycentric
correspondence between a posed and a canonical mesh, and barycentric interpolation."""
import weakref
from collections import namedtuple

import torch

from .. import _C_loader

ClosestPoint = namedtuple("ClosestPoint", ["distance", "face", "bary", "point"])
Correspondence = namedtuple("Correspondence", ["canonical_points", "distance", "face", "bary"])
SIGNS = _C_loader.choices(_C_loader.C.SignMode)
BUILDERS = _C_loader.choices(_C_loader.C.MeshBuilder)
# A built tree's tensors by name, in the order the operators take and return them.
MeshTree = namedtuple("MeshTree", [name for name, _, _ in _C_loader.C.TREE_LAYOUT])
OFFSETS = ("normal", "none")


def _type_name(x):
    return f"{x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_choice(op, name, value, choices):
    if value not in choices:
        raise ValueError(f"omnifast.{op}: {name} must be one of {tuple(choices)}, got {value!r}")


def _csr(keys, count):
    """Stable grouping of positions by key: (offsets [count + 1], positions) as int32."""
    order = torch.argsort(keys, stable=True)
    offsets = torch.zeros(count + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(keys, minlength=count), 0)
    return offsets.int(), order.int()


class MeshIndex:
    """What a face list shared by a batch of meshes fixes once: its edges, which faces meet at each
    edge and which corners at each vertex. ``build(verts)`` then makes the trees for one batch of
    vertex positions; ``closest_point``/``correspondence`` build and query in one call.

    Args:
        faces: ``[F, 3]`` int32/int64 vertex indices, any device (F >= 1). Degenerate faces,
            duplicate vertices, open boundaries and non-manifold edges are all allowed.
    """

    def __init__(self, faces):
        op = "MeshIndex"
        if not isinstance(faces, torch.Tensor) or faces.dim() != 2 or faces.shape[1] != 3 \
                or faces.shape[0] == 0:
            raise ValueError(f"omnifast.{op}: faces must be [F, 3] with F >= 1, got {_type_name(faces)}")
        if faces.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"omnifast.{op}: faces must be int32 or int64, got {faces.dtype}")
        cpu = faces.detach().to("cpu", torch.long)
        if int(cpu.min()) < 0:
            raise ValueError(f"omnifast.{op}: faces must hold vertex indices >= 0, got {int(cpu.min())}")
        self.num_faces = cpu.shape[0]
        self.min_verts = int(cpu.max()) + 1  # vertices the faces refer to
        self._faces_cpu = cpu
        edge_pairs = cpu[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)  # edge k of face f joins k, k + 1
        keys = edge_pairs.min(1).values * self.min_verts + edge_pairs.max(1).values
        self._edge_keys, edge_of_corner = torch.unique(keys, return_inverse=True)
        self.num_edges = self._edge_keys.numel()
        self._face_edges = edge_of_corner.view(-1, 3).int()
        self._edge_face_offsets, edge_slots = _csr(edge_of_corner, self.num_edges)
        self._edge_faces = (edge_slots // 3).int()
        self._topology = {}
        self._faces_on = {}

    def faces(self, device):
        """The face list as int64 on ``device``."""
        device = torch.device(device)
        if device not in self._faces_on:
            self._faces_on[device] = self._faces_cpu.to(device)
        return self._faces_on[device]

    def topology(self, device, num_verts):
        """The six int32 arrays the kernels take, for meshes of ``num_verts`` vertices."""
        key = (torch.device(device), num_verts)
        if key not in self._topology:
            offsets, corners = _csr(self._faces_cpu.reshape(-1), num_verts)
            arrays = [self._faces_cpu.int(), self._face_edges, offsets, corners,
                      self._edge_face_offsets, self._edge_faces]
            self._topology[key] = [a.contiguous().to(key[0]) for a in arrays]
        return self._topology[key]

    def _verts(self, op, verts, batched, name="verts"):
        if not isinstance(verts, torch.Tensor) or verts.dim() != (3 if batched else 2) \
                or verts.shape[-1] != 3:
            want = "[B, V, 3]" if batched else "[V, 3]"
            raise ValueError(f"omnifast.{op}: {name} must be {want}, got {_type_name(verts)}")
        if verts.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"omnifast.{op}: {name} must be float32 or float64, got {verts.dtype}")
        if verts.shape[-2] < self.min_verts:
            raise ValueError(f"omnifast.{op}: {name} must have at least {self.min_verts} vertices "
                             f"(faces refer to index {self.min_verts - 1}), got {list(verts.shape)}")
        _C_loader.require_backend(op, verts)
        return verts if batched else verts.unsqueeze(0)

    def build(self, verts, *, builder=None):
        """Trees for a batch of vertex positions.

        Args:
            verts: ``[B, V, 3]`` (or ``[V, 3]``) float32/float64.
            builder: ``"sah"`` (binned surface-area heuristic, the CPU default) or ``"lbvh"``
                (linear BVH from Morton codes, built in parallel for the whole batch; the CUDA
                default and the only CUDA builder).
        Returns:
            :class:`MeshBVH`, queried with ``closest_point``; ``refit`` moves it to new positions.
        """
        batched = isinstance(verts, torch.Tensor) and verts.dim() == 3
        v = self._verts("MeshIndex.build", verts, batched).detach().contiguous()
        if builder is None:
            builder = "lbvh" if _C_loader.runs_cuda_kernels(v) else "sah"
        _check_choice("MeshIndex.build", "builder", builder, BUILDERS)
        tree = torch.ops.omnifast.mesh_build(v, self.topology(v.device, v.shape[1]),
                                             BUILDERS[builder])
        return MeshBVH(self, v, MeshTree(*tree), batched)

    def closest_point(self, points, verts, *, sign="pseudonormal", builder=None):
        """Build the trees for ``verts`` and query them: see :func:`omnifast.closest_point`."""
        bvh = self.build(verts.detach() if isinstance(verts, torch.Tensor) else verts,
                         builder=builder)
        return bvh._query(points, verts, sign)

    def correspondence(self, points, verts, canonical_verts, *, offset="normal",
                       sign="pseudonormal", builder=None):
        """See :func:`omnifast.correspondence`."""
        op = "correspondence"
        _check_choice(op, "offset", offset, OFFSETS)
        _check_choice(op, "sign", sign, SIGNS)
        if offset == "normal" and sign == "none":
            raise ValueError("omnifast.correspondence: offset='normal' needs a signed distance "
                             "(sign='pseudonormal' or 'winding'), got sign='none'")
        self._verts(op, canonical_verts, isinstance(canonical_verts, torch.Tensor) and canonical_verts.dim() == 3,
                    "canonical_verts")
        hit = self.closest_point(points, verts, sign=sign, builder=builder)
        faces = self.faces(hit.face.device)
        canonical = barycentric_interpolate(canonical_verts, faces, hit.face, hit.bary)
        if offset == "normal":
            n = self.surface_normals(canonical_verts, hit.face, hit.bary)
            canonical = canonical + hit.distance.unsqueeze(-1) * n
        return Correspondence(canonical, hit.distance, hit.face, hit.bary)

    def surface_normals(self, verts, face, bary):
        """Unit normals at barycentric points ``(face, bary)`` of ``verts`` (batched or shared):
        the unit angle-weighted vertex normals, interpolated and renormalised; differentiable
        with respect to ``verts`` and ``bary``."""
        batched = verts.dim() == 3
        v = verts if batched else verts.unsqueeze(0)
        faces = self.faces(v.device)
        tri = v[:, faces]  # [B, F, 3 corners, 3]
        normal = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
        area = normal.norm(dim=-1, keepdim=True)  # twice the area; a zero-area face adds nothing
        unit = normal / torch.where(area > 0, area, torch.ones_like(area))
        vertex = torch.zeros_like(v)
        for k in range(3):
            e1, e2 = tri[:, :, (k + 1) % 3] - tri[:, :, k], tri[:, :, (k + 2) % 3] - tri[:, :, k]
            angle = torch.atan2(area[..., 0], (e1 * e2).sum(-1))
            vertex = vertex.index_add(1, faces[:, k], angle.unsqueeze(-1) * unit)
        vertex = vertex / vertex.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        n = barycentric_interpolate(vertex if batched else vertex[0], faces, face, bary)
        return n / n.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(n.dtype).tiny)

    def vertex_normals(self, verts):
        """Unit angle-weighted vertex normals ``[B, V, 3]`` (or ``[V, 3]``) of ``verts``, from the
        kernels (not differentiable)."""
        batched = isinstance(verts, torch.Tensor) and verts.dim() == 3
        v = self._verts("MeshIndex.vertex_normals", verts, batched).detach().contiguous()
        _, normals, _ = torch.ops.omnifast.mesh_normals(v, self.topology(v.device, v.shape[1]))
        normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        return normals if batched else normals[0]


class MeshBVH:
    """Trees of one batch of meshes (see :meth:`MeshIndex.build`)."""

    def __init__(self, index, verts, tree, batched):
        self.index, self.verts, self.tree, self._batched = index, verts, tree, batched

    def refit(self, verts):
        """The same trees over new positions of the same vertices: fresh boxes, no sort, no
        splits (cheaper than a build; the trees loosen if the meshes move far from the positions
        they were built for)."""
        v = self.index._verts("MeshBVH.refit", verts, self._batched).detach().contiguous()
        if v.shape != self.verts.shape or v.dtype != self.verts.dtype or v.device != self.verts.device:
            raise ValueError(f"omnifast.MeshBVH.refit: verts must be a {self.verts.dtype} tensor of "
                             f"shape {list(self.verts.shape)} on {self.verts.device}, got "
                             f"{_type_name(v)} on {v.device}")
        fresh = torch.ops.omnifast.mesh_refit(v, self.index.topology(v.device, v.shape[1]),
                                               list(self.tree))
        tree = self.tree._replace(**dict(zip(_C_loader.C.REFIT_FIELDS, fresh)))
        return MeshBVH(self.index, v, tree, self._batched)

    def closest_point(self, points, *, sign="pseudonormal"):
        """Query the trees (see :func:`omnifast.closest_point`); ``distance`` is differentiable
        with respect to ``points``."""
        return self._query(points, None, sign)

    def _query(self, points, verts_for_grad, sign):
        op = "closest_point"
        _check_choice(op, "sign", sign, SIGNS)
        want = 3 if self._batched else 2
        if not isinstance(points, torch.Tensor) or points.dim() != want or points.shape[-1] != 3:
            raise ValueError(f"omnifast.{op}: points must be {'[B, N, 3]' if self._batched else '[N, 3]'}"
                             f" (like verts {list(self.verts.shape)}), got {_type_name(points)}")
        if points.dtype != self.verts.dtype:
            raise ValueError(f"omnifast.{op}: points must be {self.verts.dtype} like verts, got {points.dtype}")
        if points.device != self.verts.device:
            raise ValueError(f"omnifast.{op}: points must be on the device of verts "
                             f"({self.verts.device}), got {points.device}")
        p = points if self._batched else points.unsqueeze(0)
        if p.shape[0] != self.verts.shape[0]:
            raise ValueError(f"omnifast.{op}: points must be [B, N, 3] with the B of verts "
                             f"({self.verts.shape[0]}), got {list(points.shape)}")
        # The op's autograd (registered below) differentiates the distance with respect to the
        # points and the vertices it is given: the caller's vertices when they carry a gradient.
        v = self.verts
        if verts_for_grad is not None and verts_for_grad.requires_grad:
            v = (verts_for_grad if self._batched else verts_for_grad.unsqueeze(0)).contiguous()
        topology = self.index.topology(p.device, self.verts.shape[1])
        hit = ClosestPoint(*torch.ops.omnifast.mesh_closest_point(p.contiguous(), v, topology,
                                                                  list(self.tree), SIGNS[sign]))
        return hit if self._batched else ClosestPoint(*(t[0] for t in hit))


def _closest_point_setup(ctx, inputs, output):
    points, verts, topology, tree, sign = inputs
    distance, face, bary, point = output
    ctx.mark_non_differentiable(face, bary, point)
    ctx.save_for_backward(points, distance, face, bary, point, MeshTree(*tree).face_normals, topology[0])
    ctx.signed, ctx.verts_shape, ctx.topology_count = sign != SIGNS["none"], verts.shape, len(topology)


def _closest_point_backward(ctx, grad_distance, _face, _bary, _point):
    """The distance's gradient: (p - c) / d for the query (d signed, so the sign is included)
    and minus the barycentric share of it for each corner of the closest face; at d = 0 the face
    normal for a signed distance, zero for an unsigned one."""
    points, distance, face, bary, point, face_normals, faces = ctx.saved_tensors
    found = (face >= 0).unsqueeze(-1)
    d = distance.unsqueeze(-1)
    on_surface = d == 0
    direction = (points - point) / torch.where(on_surface, torch.ones_like(d), d)
    batch = torch.arange(points.shape[0], device=points.device).view(-1, 1)
    if ctx.signed:
        direction = torch.where(on_surface, face_normals[batch, face.clamp_min(0)], direction)
    else:
        direction = torch.where(on_surface, torch.zeros_like(direction), direction)
    grad = torch.where(found, grad_distance.unsqueeze(-1) * direction, torch.zeros_like(direction))
    grad_verts = None
    if ctx.needs_input_grad[1]:
        B, N = face.shape
        grad_verts = grad.new_zeros(ctx.verts_shape)
        corners = faces.long()[face.clamp_min(0)]  # [B, N, 3]
        shares = -(bary.unsqueeze(-1) * grad.unsqueeze(-2))  # [B, N, 3, 3]
        shares = torch.where(found.unsqueeze(-1), shares, torch.zeros_like(shares))
        grad_verts.index_put_((batch.expand(B, N * 3).reshape(-1), corners.reshape(-1)),
                              shares.reshape(-1, 3), accumulate=True)
    return (grad if ctx.needs_input_grad[0] else None, grad_verts, [None] * ctx.topology_count,
            [None] * len(MeshTree._fields), None)


torch.library.register_autograd("omnifast::mesh_closest_point", _closest_point_backward,
                                setup_context=_closest_point_setup)


# ---- the free functions

_INDEXES = {}  # id(faces) -> (weak reference, a copy of the faces, MeshIndex)


def mesh_index(faces):
    """A :class:`MeshIndex` for ``faces``, reused while the same tensor is passed with the same
    contents. The contents are compared, not the version counter, which edits through ``.data``
    or ``.numpy()`` do not move; a loop over one face list is cheaper with a MeshIndex of its own."""
    if not isinstance(faces, torch.Tensor):
        return MeshIndex(faces)
    entry = _INDEXES.get(id(faces))
    if entry is not None and entry[0]() is faces and entry[1].shape == faces.shape \
            and entry[1].dtype == faces.dtype and entry[1].device == faces.device \
            and torch.equal(entry[1], faces):
        return entry[2]
    index = MeshIndex(faces)
    if len(_INDEXES) >= 16:
        _INDEXES.clear()
    _INDEXES[id(faces)] = (weakref.ref(faces), faces.detach().clone(), index)
    return index


def closest_point(points, verts, faces, *, sign="pseudonormal"):
    """The closest point of each query on its mesh, exactly (a bounding volume hierarchy prunes
    the search; the answer is that of a brute-force search over all faces).

    Args:
        points: ``[B, N, 3]`` queries (or ``[N, 3]`` with unbatched ``verts``), float32/float64.
        verts: ``[B, V, 3]`` one posed mesh per batch item (or ``[V, 3]``), the dtype of points.
        faces: ``[F, 3]`` int32/int64, shared by the batch.
        sign: ``"pseudonormal"`` (angle-weighted pseudonormal of the closest face, edge or
            vertex: exact for closed meshes), ``"winding"`` (generalised winding number > 1/2:
            robust on open meshes) or ``"none"`` (unsigned).
    Returns:
        ``ClosestPoint(distance [B, N] (negative inside), face [B, N] int64, bary [B, N, 3]
        (weights of the face's corners, non-negative, summing to 1), point [B, N, 3])``. Faces
        tied at a shared edge or vertex may resolve to either (the point and distance do not
        change). A non-finite query gets NaN and face -1. Bitwise reproducible.
        ``distance`` is differentiable with respect to ``points`` and ``verts``.
    """
    return mesh_index(faces).closest_point(points, verts, sign=sign)


def correspondence(points, verts, canonical_verts, faces, *, offset="normal", sign="pseudonormal"):
    """Carry each query to a canonical mesh through its closest point's barycentric coordinates.

    Args:
        points, verts, faces, sign: as for :func:`closest_point`.
        canonical_verts: ``[B, V, 3]`` or ``[V, 3]`` (shared) canonical vertex positions.
        offset: ``"normal"``: add the signed distance along the canonical surface normal
            (interpolated unit vertex normals), so off-surface points map volumetrically;
            ``"none"``: the canonical surface point only.
    Returns:
        ``Correspondence(canonical_points [B, N, 3], distance, face, bary)``; canonical_points
        are differentiable with respect to ``canonical_verts`` (and, through the distance, to
        ``points`` and ``verts``).
    """
    return mesh_index(faces).correspondence(points, verts, canonical_verts, offset=offset, sign=sign)


def barycentric_interpolate(values, faces, face, bary):
    """Per-vertex values at barycentric points: ``sum_k bary[..., k] * values[faces[face, k]]``.

    Args:
        values: ``[B, V, K]`` per mesh or ``[V, K]`` shared (integer values are interpolated in
            the floating dtype of ``bary``).
        faces: ``[F, 3]`` int32/int64.
        face: ``[B, N]`` (or ``[N]``) int64 face ids, each in ``[0, F)`` or -1 (no face, as
            :func:`closest_point` returns for a non-finite query); bary: ``[B, N, 3]`` (or
            ``[N, 3]``) floating.
    Returns:
        ``[B, N, K]`` (``[N, K]`` for unbatched face and shared values) in the promoted floating
        dtype, NaN where ``face`` is -1; differentiable with respect to ``values`` and ``bary``.
    """
    op = "barycentric_interpolate"
    for name, t in (("values", values), ("faces", faces), ("face", face), ("bary", bary)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"omnifast.{op}: {name} must be a tensor, got {type(t).__name__}")
    if values.dim() not in (2, 3):
        raise ValueError(f"omnifast.{op}: values must be [B, V, K] or [V, K], got {list(values.shape)}")
    if faces.dim() != 2 or faces.shape[1] != 3 or faces.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"omnifast.{op}: faces must be an int32/int64 [F, 3] tensor, got {_type_name(faces)}")
    if face.dtype not in (torch.int32, torch.int64) or bary.shape != face.shape + (3,):
        raise ValueError(f"omnifast.{op}: face must be integer [..., N] and bary [..., N, 3], got "
                         f"{_type_name(face)} and {_type_name(bary)}")
    if not bary.is_floating_point():
        raise ValueError(f"omnifast.{op}: bary must be floating, got {bary.dtype}")
    if values.dim() == 3 and (face.dim() != 2 or face.shape[0] != values.shape[0]):
        raise ValueError(f"omnifast.{op}: face must be [B, N] with the B of values "
                         f"({values.shape[0]}), got {list(face.shape)}")
    for name, t in (("faces", faces), ("face", face), ("bary", bary)):
        if t.device != values.device:
            raise ValueError(f"omnifast.{op}: {name} must be on the device of values "
                             f"({values.device}), got {t.device}")
    if face.numel():
        low, high = int(face.min()), int(face.max())
        if low < -1 or high >= faces.shape[0]:
            raise ValueError(f"omnifast.{op}: face must hold face ids in [0, {faces.shape[0]}) or -1, "
                             f"got ids from {low} to {high}")
    if faces.numel() and int(faces.max()) >= values.shape[-2]:
        raise ValueError(f"omnifast.{op}: values must have a row per vertex the faces refer to "
                         f"({int(faces.max()) + 1}), got {list(values.shape)}")
    dtype = torch.promote_types(values.dtype, bary.dtype) if values.is_floating_point() else bary.dtype
    corners = faces.long()[face.long().clamp_min(0)]  # [..., N, 3]
    if values.dim() == 2:
        gathered = values[corners]
    else:
        batch = torch.arange(values.shape[0], device=values.device).view(-1, 1, 1)
        gathered = values[batch, corners]  # [B, N, 3, K]
    out = (gathered.to(dtype) * bary.unsqueeze(-1).to(dtype)).sum(-2)
    return torch.where((face >= 0).unsqueeze(-1), out, torch.full_like(out, float("nan")))


# ---- shape functions for tracing (torch.compile, opcheck), from the layout _C exports

def _tree_fields(verts, topology, names):
    B, V = verts.shape[:2]
    F, E = topology[0].shape[0], topology[4].shape[0] - 1
    sizes = {"B": B, "V": V, "F": F, "E": E, "nodes": torch.sym_max(F - 1, 1)}
    return [verts.new_empty([sizes.get(d, d) for d in dims],
                            dtype=torch.int32 if dtype == "int32" else verts.dtype)
            for name, dims, dtype in _C_loader.C.TREE_LAYOUT if name in names]


@torch.library.register_fake("omnifast::mesh_normals")
def _mesh_normals_fake(verts, topology):
    return tuple(_tree_fields(verts, topology, ("face_normals", "vertex_normals", "edge_normals")))


@torch.library.register_fake("omnifast::mesh_build")
def _mesh_build_fake(verts, topology, builder):
    return _tree_fields(verts, topology, MeshTree._fields)


@torch.library.register_fake("omnifast::mesh_refit")
def _mesh_refit_fake(verts, topology, tree):
    return _tree_fields(verts, topology, _C_loader.C.REFIT_FIELDS)


@torch.library.register_fake("omnifast::mesh_closest_point")
def _mesh_closest_point_fake(points, verts, topology, tree, sign):
    B, N, _ = points.shape
    return (points.new_empty(B, N), points.new_empty(B, N, dtype=torch.long),
            points.new_empty(B, N, 3), points.new_empty(B, N, 3))
