"""Closest-point benchmark: omnifast (tree build included) against brute force and the libraries
people use for this (trimesh, Open3D's Embree scene, Warp's BVH), each where it is installed, on a
FLAME-sized head mesh (10,008 faces) with semantic-SDF training queries."""
from dataclasses import dataclass

import torch

from ..geometry import meshes
from ..ops.mesh import MeshIndex
from ..reference import mesh as reference
from .measure import import_optional


@dataclass(frozen=True)
class CorrespondenceCase:
    name: str
    batch: int   # posed meshes
    points: int  # queries in total, split evenly over the meshes
    rings: int = 70
    segments: int = 72

    @property
    def per_mesh(self):
        return self.points // self.batch


def correspondence_cases(device, quick=False):
    if quick:
        return [CorrespondenceCase("quick B=2 2k points", 2, 2000, 20, 24)]
    return [CorrespondenceCase(f"B={b} {n:.0e} points".replace("e+0", "e"), b, n)
            for b in (1, 8) for n in (10 ** 5, 10 ** 6)]


def make_inputs(case, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    canonical, faces = meshes.head_mesh(case.rings, case.segments)
    verts = meshes.posed_batch(canonical, case.batch, gen)
    points = meshes.training_points(verts, faces, case.per_mesh, gen)
    return verts.to(device, dtype), faces.to(device), points.to(device, dtype)


@dataclass
class Contender:
    """One implementation: run() answers the whole case, or `measured` of its points when the
    full case would take minutes (then `scale` turns the time into the full case's estimate)."""
    name: str
    run: object
    measured: int
    scale: float = 1.0
    note: str = ""


def _omnifast(case, verts, faces, points, sign):
    index = MeshIndex(faces)  # topology only: made once per model, not per step
    return Contender(f"omnifast ({sign})" if sign != "none" else "omnifast",
                     lambda: index.closest_point(points, verts, sign=sign), case.points,
                     note="tree build included in every call")


def _brute_force(case, verts, faces, points, subset):
    sub = points[:, :max(1, subset // case.batch)]
    return Contender("brute force (torch)",
                     lambda: reference.closest_point(sub, verts, faces, sign="none"),
                     sub.shape[0] * sub.shape[1], case.points / (sub.shape[0] * sub.shape[1]),
                     "every query against every face")


def _trimesh(case, verts, faces, points, subset):
    trimesh, why = import_optional("trimesh")
    if trimesh is None:
        return None, why
    v, f = verts.double().cpu().numpy(), faces.cpu().numpy()
    sub = points[:, :max(1, subset // case.batch)].double().cpu().numpy()

    def run():
        for b in range(case.batch):
            mesh = trimesh.Trimesh(v[b], f, process=False)
            trimesh.proximity.closest_point(mesh, sub[b])
    # Its tree builds (scipy k-d tree, R-tree) are per mesh and included; the per-point cost is
    # a Python loop, so time grows linearly with the points: measured on a subset, scaled.
    return Contender("trimesh", run, sub.shape[0] * sub.shape[1],
                     case.points / (sub.shape[0] * sub.shape[1]),
                     "R-tree + k-d tree, per-query Python loop"), None


def _open3d(case, verts, faces, points):
    o3d, why = import_optional("open3d")
    if o3d is None:
        return None, why
    import numpy as np

    v = verts.float().cpu().numpy()
    f = faces.cpu().numpy().astype(np.uint32)
    p = points.float().cpu().numpy()

    def run():
        for b in range(case.batch):
            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(o3d.core.Tensor(v[b]), o3d.core.Tensor(f))
            scene.compute_closest_points(o3d.core.Tensor(p[b]))
    return Contender("open3d (Embree)", run, case.points, note="a scene per mesh, all threads"), None


def _warp(case, verts, faces, points, device):
    wp, why = import_optional("warp")
    if wp is None:
        return None, why
    wp.config.quiet = True
    wp.init()
    wdev = "cuda" if device.type == "cuda" else "cpu"
    kernel = _warp_kernel(wp)
    v = [wp.from_torch(verts[b].float().contiguous(), dtype=wp.vec3) for b in range(case.batch)] \
        if wdev == "cuda" else [wp.array(verts[b].float().numpy(), dtype=wp.vec3, device="cpu")
                                for b in range(case.batch)]
    idx = wp.array(faces.int().reshape(-1).cpu().numpy(), dtype=wp.int32, device=wdev)
    pts = [wp.array(points[b].float().cpu().numpy(), dtype=wp.vec3, device=wdev) for b in range(case.batch)]
    out = wp.zeros(case.per_mesh, dtype=wp.float32, device=wdev)

    def run():
        for b in range(case.batch):
            mesh = wp.Mesh(points=v[b], indices=idx)
            wp.launch(kernel, dim=case.per_mesh, inputs=[mesh.id, pts[b], out], device=wdev)
        wp.synchronize()
    run()  # compile the kernel outside the timing
    return Contender(f"warp ({wdev})", run, case.points,
                     note="a wp.Mesh per mesh" + (", CPU kernels single-threaded" if wdev == "cpu" else "")), None


_WARP_KERNEL = None


def _warp_kernel(wp):
    global _WARP_KERNEL
    if _WARP_KERNEL is None:
        @wp.kernel
        def closest(mesh: wp.uint64, pts: wp.array(dtype=wp.vec3), out: wp.array(dtype=wp.float32)):
            i = wp.tid()
            q = wp.mesh_query_point_no_sign(mesh, pts[i], 1.0e6)
            if q.result:
                out[i] = wp.length(wp.mesh_eval_position(mesh, q.face, q.u, q.v) - pts[i])
        _WARP_KERNEL = closest
    return _WARP_KERNEL


def correspondence_contenders(case, device, quick=False, subset=2000):
    """The implementations for one case on `device`, and {name: why it is absent}; the slow ones
    (brute force, trimesh) answer `subset` (and 5 x `subset`) of the queries."""
    device = torch.device(device)
    verts, faces, points = make_inputs(case, device)
    subset = 200 if quick else subset
    contenders = [_omnifast(case, verts, faces, points, "none"),
                  _omnifast(case, verts, faces, points, "pseudonormal"),
                  _brute_force(case, verts, faces, points, subset)]
    missing = {}
    peers = [("warp", lambda: _warp(case, verts, faces, points, device))]
    if device.type == "cpu":  # trimesh and Open3D answer on the CPU only
        peers = [("trimesh", lambda: _trimesh(case, verts, faces, points, subset * 5)),
                 ("open3d", lambda: _open3d(case, verts.cpu(), faces, points))] + peers
    for name, make in peers:
        contender, why = make()
        if contender is None:
            missing[name] = why
        else:
            contenders.append(contender)
    return contenders, missing
