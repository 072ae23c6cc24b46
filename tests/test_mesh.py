"""closest_point / correspondence / barycentric_interpolate / MeshIndex against the brute-force
reference, trimesh, analytic inside/outside, and their error messages."""
import math

import pytest
import torch

import omnifast
from omnifast.geometry import meshes
from omnifast.reference import mesh as ref

from conftest import DEVICES, poisoned_outputs

TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def builders(device):
    return ["sah", "lbvh"] if device == "cpu" else ["lbvh"]


def icosphere(subdivisions):
    """The unit icosphere trimesh.creation.icosphere makes (the same points, in another order):
    an icosahedron split into four per face `subdivisions` times, each time onto the sphere."""
    t = (1 + 5 ** 0.5) / 2
    verts = torch.tensor([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
                          [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=torch.float64)
    faces = torch.tensor([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                          [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                          [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    verts = verts / verts.norm(dim=-1, keepdim=True)
    for _ in range(subdivisions):
        edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).sort(-1).values
        unique, inverse = edges.unique(dim=0, return_inverse=True)
        ab, bc, ca = (inverse.view(-1, 3) + verts.shape[0]).unbind(-1)
        a, b, c = faces.unbind(-1)
        faces = torch.stack([a, ab, ca, ab, b, bc, ca, bc, c, ab, bc, ca], -1).reshape(-1, 3)
        middle = verts[unique].mean(1)
        verts = torch.cat([verts, middle / middle.norm(dim=-1, keepdim=True)])
    return verts, faces


def blob(batch, subdivisions=2, dtype=torch.float64, noise=0.15):
    """Closed, outward, star-shaped meshes: an icosphere with random radial bumps per batch item."""
    unit, faces = icosphere(subdivisions)
    radius = 1 + noise * torch.rand(batch, unit.shape[0], 1, dtype=dtype)
    return unit.to(dtype) * radius, faces


def queries(verts, count, dtype=torch.float64):
    """Near-surface points, points far outside and points deep inside."""
    B = verts.shape[0]
    idx = torch.randint(verts.shape[1], (B, count))
    base = torch.gather(verts, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    near = base + 0.05 * torch.randn(B, count, 3, dtype=verts.dtype)
    far = 30 * torch.randn(B, count // 4, 3, dtype=verts.dtype)
    inner = 0.3 * torch.randn(B, count // 4, 3, dtype=verts.dtype)
    return torch.cat([near, far, inner], 1).to(dtype)


def check_against_reference(hit, points, verts, faces, sign, dtype):
    want = ref.closest_point(points.double().cpu(), verts.double().cpu(), faces, sign=sign)
    tol = TOL[dtype]
    got = [t.cpu() for t in hit]
    torch.testing.assert_close(got[0].double(), want.distance, atol=tol, rtol=tol)
    # The point found is as near as the nearest (faces may differ at ties); in float64 it is the
    # same point, in float32 far queries may pick another within rounding of the same distance.
    reach = (points.double().cpu() - got[3].double()).norm(dim=-1)
    torch.testing.assert_close(reach, want.distance.abs(), atol=tol, rtol=tol)
    if dtype == torch.float64:
        torch.testing.assert_close(got[3], want.point, atol=tol, rtol=tol)
    corners = verts.double().cpu()[torch.arange(verts.shape[0]).view(-1, 1, 1), faces[got[1]]]
    rebuilt = (got[2].double().unsqueeze(-1) * corners).sum(-2)
    torch.testing.assert_close(rebuilt, got[3].double(), atol=tol * 10, rtol=tol)
    assert (got[2] >= 0).all()
    torch.testing.assert_close(got[2].sum(-1).double(), torch.ones_like(want.distance), atol=tol, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sign", ["none", "pseudonormal", "winding"])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_brute_force(device, dtype, sign, batch):
    verts, faces = blob(batch)
    points = queries(verts, 400)
    for builder in builders(device):
        index = omnifast.MeshIndex(faces.to(device))
        with poisoned_outputs():
            hit = index.closest_point(points.to(device, dtype), verts.to(device, dtype), sign=sign,
                                      builder=builder)
        check_against_reference(hit, points.to(dtype), verts.to(dtype), faces, sign, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triangle_soup_with_degenerate_triangles(device, dtype):
    """Random overlapping triangles, some with two equal corners and some with collinear ones."""
    verts = torch.randn(2, 300, 3, dtype=torch.float64)
    faces = torch.randint(300, (150, 3))
    faces[:10, 1] = faces[:10, 0]  # zero-length edge
    faces[10:15] = faces[10:15, :1]  # all three corners the same vertex
    collinear = torch.arange(15, 25)
    verts[:, faces[collinear, 2]] = 0.3 * verts[:, faces[collinear, 0]] + 0.7 * verts[:, faces[collinear, 1]]
    points = torch.cat([torch.randn(2, 300, 3, dtype=torch.float64),
                        verts[:, faces[:25].reshape(-1)]], 1)  # on the degenerate triangles too
    for builder in builders(device):
        hit = omnifast.MeshIndex(faces).build(verts.to(device, dtype), builder=builder) \
            .closest_point(points.to(device, dtype), sign="none")
        check_against_reference(hit, points.to(dtype), verts.to(dtype), faces, "none", dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_points_on_vertices_edges_and_faces(device):
    verts, faces = blob(1)
    v = verts[0]
    tri = v[faces]
    on = torch.cat([v, (tri[:, 0] + tri[:, 1]) / 2, tri.mean(1)])[None]  # vertices, edge midpoints, centroids
    hit = omnifast.closest_point(on.to(device), verts.to(device), faces.to(device))
    assert hit.distance.abs().max() < 1e-12
    torch.testing.assert_close(hit.point.cpu(), on, atol=1e-12, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_builders_and_refit_agree(device):
    """Any tree, built by either builder or refitted from other positions, finds the same
    distances and points; only faces tied at a shared edge or vertex may differ."""
    verts, faces = blob(2, 3)
    moved = verts * 1.1 + 0.05 * torch.randn_like(verts)
    points = queries(moved, 500)
    index = omnifast.MeshIndex(faces)
    answers = []
    for builder in builders(device):
        bvh = index.build(verts.to(device), builder=builder)
        answers.append(bvh.refit(moved.to(device)).closest_point(points.to(device)))
        answers.append(index.build(moved.to(device), builder=builder).closest_point(points.to(device)))
    first = answers[0]
    for other in answers[1:]:
        torch.testing.assert_close(other.distance, first.distance, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(other.point, first.point, atol=1e-12, rtol=1e-12)
        same = other.face == first.face
        assert same.float().mean() > 0.98
        torch.testing.assert_close(other.bary[same], first.bary[same], atol=1e-12, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_against_trimesh(device):
    """trimesh.proximity.closest_point, an independent float64 implementation: the same answers
    on an icosphere. On the head-sized mesh trimesh (5.2) misses the nearest face for a few
    near-surface queries (its distance exceeds the brute-force minimum); there ours is never
    farther than trimesh's and equals the brute force."""
    trimesh = pytest.importorskip("trimesh", reason="the comparison with trimesh needs trimesh")
    pytest.importorskip("rtree", reason="trimesh's closest points need rtree")
    sphere = trimesh.creation.icosphere(3)
    head_v, head_f = meshes.head_mesh(rings=30, segments=32)
    for v, f, exact in ((torch.tensor(sphere.vertices), torch.tensor(sphere.faces), True),
                        (head_v, head_f, False)):
        mesh = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
        points = meshes.training_points(v[None], f, 2000)[0]
        closest, distance, _ = trimesh.proximity.closest_point(mesh, points.numpy())
        distance, closest = torch.tensor(distance), torch.tensor(closest)
        hit = omnifast.closest_point(points.to(device), v.to(device), f.to(device), sign="none")
        got, got_point = hit.distance.cpu(), hit.point.cpu()
        agree = (got - distance).abs() <= 1e-9
        assert (got <= distance + 1e-12).all()
        assert agree.all() if exact else agree.float().mean() > 0.95
        # (points only up to ties: equidistant surface points are equally right)
        torch.testing.assert_close((points - got_point).norm(dim=-1), got, atol=1e-12, rtol=1e-12)
        assert ((got_point - closest).norm(dim=-1)[agree] < 1e-9).float().mean() > 0.99
        if not exact:
            brute = ref.closest_point(points[~agree][None], v[None], f, sign="none").distance[0]
            torch.testing.assert_close(got[~agree], brute, atol=1e-12, rtol=1e-12)


def torus(major=1.0, minor=0.35, rings=48, sides=24):
    u = torch.arange(rings, dtype=torch.float64) * (2 * math.pi / rings)
    w = torch.arange(sides, dtype=torch.float64) * (2 * math.pi / sides)
    uu, ww = torch.meshgrid(u, w, indexing="ij")
    r = major + minor * torch.cos(ww)
    verts = torch.stack([r * torch.cos(uu), r * torch.sin(uu), minor * torch.sin(ww)], -1).reshape(-1, 3)
    i, j = torch.meshgrid(torch.arange(rings), torch.arange(sides), indexing="ij")
    a, b = i * sides + j, ((i + 1) % rings) * sides + j
    c, d = ((i + 1) % rings) * sides + (j + 1) % sides, i * sides + (j + 1) % sides
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return verts, faces


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sign", ["pseudonormal", "winding"])
def test_sign_of_sphere_and_torus(device, sign):
    cases = [(*icosphere(4), lambda p: p.norm(dim=-1) - 1, 0.01)]
    tv, tf = torus()
    cases.append((tv, tf, lambda p: torch.stack([p[:, :2].norm(dim=-1) - 1, p[:, 2]], -1).norm(dim=-1) - 0.35,
                  0.03))
    for verts, faces, sdf, margin in cases:
        points = 1.6 * (torch.rand(6000, 3, dtype=torch.float64) * 2 - 1)
        truth = sdf(points)
        points = points[truth.abs() > margin]  # away from the polygonisation error
        hit = omnifast.closest_point(points.to(device), verts.to(device), faces.to(device), sign=sign)
        assert torch.equal(hit.distance.cpu() < 0, sdf(points) < 0)


@pytest.mark.parametrize("device", DEVICES)
def test_winding_number_sign_on_an_open_mesh(device):
    """The head mesh is open at the neck: the winding number still tells inside from outside where
    it is clearly 0 or 1, and agrees with the exact (brute-force) winding number."""
    verts, faces = meshes.head_mesh(rings=30, segments=32)
    points = meshes.training_points(verts[None], faces, 3000)
    exact = ref.winding_number(points, verts[None], faces)
    clear = (exact - 0.5).abs() > 0.1
    hit = omnifast.closest_point(points.to(device), verts[None].to(device), faces.to(device), sign="winding")
    assert torch.equal((hit.distance.cpu() < 0)[clear], (exact > 0.5)[clear])
    centre = verts.mean(0, keepdim=True)[None]
    assert omnifast.closest_point(centre.to(device), verts[None].to(device), faces.to(device),
                                  sign="winding").distance.item() < 0


@pytest.mark.parametrize("device", DEVICES)
def test_correspondence_carries_surface_points_exactly(device):
    canonical, faces = meshes.head_mesh(rings=24, segments=24)
    angle = 0.4
    rotation = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                             [-math.sin(angle), 0, math.cos(angle)]], dtype=torch.float64)
    rigid = canonical @ rotation.T + torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64)
    bent = canonical + 0.01 * torch.sin(30 * canonical[:, [1, 2, 0]])  # per-vertex displacement
    posed = torch.stack([rigid, bent])
    on, face, bary = meshes.surface_samples(posed, faces, 1500)
    expected = omnifast.barycentric_interpolate(canonical, faces, face, bary)
    for offset in ("normal", "none"):
        got = omnifast.correspondence(on.to(device), posed.to(device), canonical.to(device),
                                      faces.to(device), offset=offset)
        assert got.distance.abs().max() < 1e-12
        torch.testing.assert_close(got.canonical_points.cpu(), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_correspondence_offsets_along_the_canonical_normal(device):
    verts, faces = blob(2)
    canonical = verts[0]
    points = queries(verts, 200)
    index = omnifast.MeshIndex(faces.to(device))
    out = index.correspondence(points.to(device), verts.to(device), canonical.to(device))
    surface = omnifast.barycentric_interpolate(canonical.to(device), faces.to(device), out.face, out.bary)
    normal = omnifast.barycentric_interpolate(index.vertex_normals(canonical.to(device)),
                                              faces.to(device), out.face, out.bary)
    offset = out.canonical_points - surface
    torch.testing.assert_close(offset, out.distance.unsqueeze(-1) * normal / normal.norm(dim=-1, keepdim=True))
    with pytest.raises(ValueError, match="needs a signed distance"):
        index.correspondence(points.to(device), verts.to(device), canonical.to(device), sign="none")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sign", ["none", "pseudonormal"])
def test_distance_gradcheck(device, sign):
    verts, faces = blob(1, 1)
    points = 1.5 * torch.nn.functional.normalize(torch.randn(1, 12, 3, dtype=torch.float64), dim=-1)
    points = points.to(device).requires_grad_()
    verts = verts.to(device).requires_grad_()
    faces = faces.to(device)
    fn = lambda p, v: omnifast.closest_point(p, v, faces, sign=sign).distance  # noqa: E731
    assert torch.autograd.gradcheck(fn, (points, verts), eps=1e-7, atol=1e-6)


def test_distance_gradient_is_the_unit_direction():
    verts, faces = blob(1)
    points = queries(verts, 100).requires_grad_()
    hit = omnifast.closest_point(points, verts, faces)
    hit.distance.sum().backward()
    direction = (points - hit.point) / hit.distance.unsqueeze(-1)
    torch.testing.assert_close(points.grad, direction.detach())
    torch.testing.assert_close(points.grad.norm(dim=-1), torch.ones(1, points.shape[1], dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_barycentric_interpolate_gradcheck(device):
    faces = torch.randint(20, (30, 3), device=device)
    face = torch.randint(30, (2, 7), device=device)
    values = torch.randn(2, 20, 4, dtype=torch.float64, device=device, requires_grad=True)
    shared = torch.randn(20, 4, dtype=torch.float64, device=device, requires_grad=True)
    bary = torch.rand(2, 7, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, b: omnifast.barycentric_interpolate(v, faces, face, b), (values, bary))
    assert torch.autograd.gradcheck(lambda v, b: omnifast.barycentric_interpolate(v, faces, face, b), (shared, bary))
    out = omnifast.barycentric_interpolate(shared, faces, face, bary)
    manual = sum(bary[..., k, None] * shared[faces[face][..., k]] for k in range(3))
    torch.testing.assert_close(out, manual)


@pytest.mark.parametrize("device", DEVICES)
def test_sizes_empty_unbatched_and_large_batch(device):
    verts, faces = blob(8)
    index = omnifast.MeshIndex(faces)
    empty = index.closest_point(torch.zeros(8, 0, 3, dtype=torch.float64, device=device), verts.to(device))
    assert [tuple(t.shape) for t in empty] == [(8, 0), (8, 0), (8, 0, 3), (8, 0, 3)]
    points = queries(verts, 64)
    batched = index.closest_point(points.to(device), verts.to(device))
    single = index.closest_point(points[3].to(device), verts[3].to(device))
    for a, b in zip(batched, single):
        assert torch.equal(a[3], b)
    one_face = omnifast.closest_point(points[:1].to(device), verts[:1].to(device), faces[:1].to(device))
    check_against_reference(one_face, points[:1], verts[:1], faces[:1], "pseudonormal", torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_queries_give_nan_and_no_face(device):
    verts, faces = blob(1)
    points = torch.tensor([[[float("nan"), 0, 0], [0, float("inf"), 0], [2.0, 0, 0]]], dtype=torch.float64)
    hit = omnifast.closest_point(points.to(device), verts.to(device), faces.to(device))
    assert hit.face.cpu().tolist()[0][:2] == [-1, -1] and hit.face[0, 2] >= 0
    assert torch.isnan(hit.distance[0, :2]).all() and torch.isnan(hit.point[0, :2]).all()
    assert torch.isfinite(hit.distance[0, 2])


def test_deterministic():
    verts, faces = blob(2, 3)
    points = queries(verts, 3000)
    first = omnifast.closest_point(points, verts, faces, sign="winding")
    again = omnifast.closest_point(points, verts, faces, sign="winding")
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_opcheck():
    verts, faces = blob(2)
    index = omnifast.MeshIndex(faces)
    topology = index.topology("cpu", verts.shape[1])
    tree = torch.ops.omnifast.mesh_build(verts, topology, 0)
    points = queries(verts, 50)
    torch.library.opcheck(torch.ops.omnifast.mesh_closest_point, (points, verts, topology, tree, 1))
    torch.library.opcheck(torch.ops.omnifast.mesh_build, (verts, topology, 1))
    torch.library.opcheck(torch.ops.omnifast.mesh_refit, (verts * 2, topology, tree))
    torch.library.opcheck(torch.ops.omnifast.mesh_normals, (verts, topology))


def test_errors_name_the_argument():
    verts, faces = blob(2)
    points = queries(verts, 10)
    index = omnifast.MeshIndex(faces)
    cases = [
        (lambda: omnifast.MeshIndex(torch.tensor([[0, 1, -1]])), "faces must hold vertex indices >= 0"),
        (lambda: omnifast.MeshIndex(torch.zeros(0, 3, dtype=torch.long)), r"faces must be \[F, 3\]"),
        (lambda: omnifast.MeshIndex(torch.zeros(4, 3)), "faces must be int32 or int64"),
        (lambda: index.closest_point(points, verts[:, :10]), "verts must have at least"),
        (lambda: index.closest_point(points, verts[0]), r"points must be \[N, 3\]"),
        (lambda: index.closest_point(points[:1], verts), "with the B of verts"),
        (lambda: index.closest_point(points.long(), verts), "points must be torch.float64"),
        (lambda: index.closest_point(points, verts.half()), "verts must be float32 or float64"),
        (lambda: index.closest_point(points.float(), verts), "points must be torch.float64"),
        (lambda: index.closest_point(points, verts, sign="parity"), "sign must be one of"),
        (lambda: index.build(verts, builder="median"), "builder must be one of"),
        (lambda: index.closest_point(points.to("meta"), verts), "points must be on the device"),
        (lambda: omnifast.barycentric_interpolate(verts, faces, torch.zeros(3, 5, dtype=torch.long),
                                                  torch.zeros(3, 5, 3)), "with the B of values"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, RuntimeError), match=message):
            call()
    # The kernels check their own arguments too, before any work.
    topology = index.topology("cpu", verts.shape[1])
    tree = torch.ops.omnifast.mesh_build(verts, topology, 0)
    with pytest.raises(RuntimeError, match=r"omnifast.closest_point: points must be \[B, N, 3\]"):
        torch.ops.omnifast.mesh_closest_point(points[:1], verts, topology, tree, 1)
    with pytest.raises(RuntimeError, match="omnifast.mesh_build: verts must be"):
        torch.ops.omnifast.mesh_build(verts[:, :7], topology, 0)
    with pytest.raises(RuntimeError, match="omnifast.closest_point: tree must be 10 tensors"):
        torch.ops.omnifast.mesh_closest_point(points, verts, topology, tree[:3], 1)


def test_torch_compile():
    """A compiled training step that queries the trees (and differentiates the distance) gives
    the eager answers."""
    verts, faces = blob(2)
    points = queries(verts, 50)
    index = omnifast.MeshIndex(faces)

    def step(p, v):
        return (index.closest_point(p, v).distance ** 2).sum()

    eager_p, compiled_p = points.clone().requires_grad_(), points.clone().requires_grad_()
    eager = step(eager_p, verts)
    compiled = torch.compile(step)(compiled_p, verts)
    torch.testing.assert_close(compiled, eager)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(compiled_p.grad, eager_p.grad)


# ---- exactness on thin triangles, zero-area faces, non-finite and huge inputs

def thin_triangle_cases(dtype, kinds=("needle", "cap"), widths=(1e-2, 1e-5, 4e-8, 1e-12, 1e-17)):
    """Needles (one short edge) and caps (one long edge, an angle near pi) 1 long and `width`
    wide, randomly rotated and moved, with queries on them, near them at scales from 1e-9 to
    0.1, and beyond each corner (where the side tests of two near-parallel edges meet)."""
    for kind in kinds:
        for width in widths:
            q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
            local = torch.tensor([[0, 0, 0], [1, 0, 0], [1, width, 0] if kind == "needle" else [0.37, width, 0]],
                                 dtype=torch.float64)
            shift = torch.randn(3, dtype=torch.float64)
            weights = torch.rand(60, 3, dtype=torch.float64)
            on = (weights / weights.sum(1, keepdim=True)) @ local
            near = on + torch.randn(60, 3, dtype=torch.float64) * torch.logspace(-9, -1, 60, dtype=torch.float64)[:, None]
            outward = [(2 * local[k] - local[(k + 1) % 3] - local[(k + 2) % 3]) / 2 for k in range(3)]
            beyond = torch.cat([local[k] + outward[k] * torch.logspace(-8, 0, 20, dtype=torch.float64)[:, None]
                                for k in range(3)])
            points = torch.cat([on, near, beyond]) @ q.T + shift
            yield kind, width, (local @ q.T + shift).to(dtype), points.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_thin_triangles_are_exact(device, dtype):
    """However thin a triangle is, the distance is exact to rounding (the side tests of the
    foot on the plane must agree with one another even where two edges are nearly parallel)."""
    faces = torch.tensor([[0, 1, 2]])
    # The float32 triangle and the query on it from the report: 1.9e-4 before.
    tri = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0.01, 0]], dtype=torch.float32)
    hit = omnifast.closest_point(torch.tensor([[0.29, 0.001015, 0]], device=device), tri.to(device), faces.to(device))
    assert float(hit.distance.abs()) < TOL[torch.float32]
    for kind, width, verts, points in thin_triangle_cases(dtype):
        for builder in builders(device):
            hit = omnifast.MeshIndex(faces).build(verts[None].to(device), builder=builder) \
                .closest_point(points[None].to(device), sign="none")
            want = ref.closest_point(points[None], verts[None], faces, sign="none")
            error = float((hit.distance.cpu().double() - want.distance.double()).abs().max())
            assert error < TOL[dtype], f"{kind} {width}: {error}"
            reach = (points[None].double() - hit.point.cpu().double()).norm(dim=-1)
            assert float((reach - want.distance.double()).abs().max()) < TOL[dtype]


def test_reference_is_exact_on_thin_triangles():
    """The brute-force reference has no thinness threshold: on thin float64 triangles it agrees
    with the closest point computed in exact rational arithmetic."""
    faces = torch.tensor([[0, 1, 2]])
    for kind, width, verts, points in thin_triangle_cases(torch.float64, widths=(1e-8, 1e-14)):
        want = ref.closest_point(points[None], verts[None], faces, sign="none")
        for i in range(0, points.shape[0], 7):
            sq, _, point = ref._exact_closest(points[i].tolist(), *verts.tolist())
            assert abs(float(want.distance[0, i]) - sq ** 0.5) < 1e-15 + 1e-12 * sq ** 0.5, (kind, width, i)
            torch.testing.assert_close(want.point[0, i], torch.tensor(point, dtype=torch.float64),
                                       atol=1e-14, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_marching_cubes_mesh_float32(device):
    """A marching-cubes surface (what export-sdf writes) has many slivers; float32 queries are
    exact to 1e-5."""
    from skimage.measure import marching_cubes

    axis = torch.linspace(-1, 1, 24, dtype=torch.float64)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    field = (x / 0.8) ** 2 + (y / 0.6) ** 2 + (z / 0.7) ** 2 - 1 + 0.1 * torch.sin(5 * x) * torch.cos(4 * y)
    v, f, _, _ = marching_cubes(field.numpy(), 0.0, spacing=(2 / 23,) * 3)
    verts = torch.tensor(v - 1, dtype=torch.float32)[None]
    faces = torch.tensor(f.copy(), dtype=torch.long)
    on = meshes.surface_samples(verts.double(), faces, 500)[0]
    points = torch.cat([on, meshes.jitter(on, 0.01)], 1).float()
    hit = omnifast.closest_point(points.to(device), verts.to(device), faces.to(device), sign="none")
    want = ref.closest_point(points, verts, faces, sign="none")
    assert float((hit.distance.cpu().double() - want.distance.double()).abs().max()) < TOL[torch.float32]


def octahedron(dtype=torch.float64):
    verts = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=dtype)
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                          [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return verts, faces


@pytest.mark.parametrize("device", DEVICES)
def test_zero_area_faces_take_no_part_in_the_sign(device):
    """A closed octahedron plus a zero-area face joining two opposite vertices (through the
    inside): the distance counts that face, the sign does not (it was +0.05 with the
    pseudonormal, whose edge only that face touches)."""
    verts, faces = octahedron()
    faces = torch.cat([faces, torch.tensor([[0, 0, 1]])])
    points = torch.tensor([[0.3, 0.05, 0], [0.3, 0, 0.02], [2, 0, 0], [0.1, 0.1, 0.1]], dtype=torch.float64)
    for sign in ("pseudonormal", "winding"):
        hit = omnifast.closest_point(points.to(device), verts.to(device), faces.to(device), sign=sign)
        torch.testing.assert_close(hit.distance.cpu(), torch.tensor([-0.05, -0.02, 1.0, -0.02 ** 0.5],
                                                                    dtype=torch.float64), atol=1e-12, rtol=0)
        assert hit.face[0].item() == 8  # the segment is the nearest face
        want = ref.closest_point(points[None], verts[None], faces, sign=sign)
        torch.testing.assert_close(hit.distance.cpu(), want.distance[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_vertices_give_nan(device):
    """A NaN or inf vertex used by a face makes every query of that mesh NaN with face -1 (it
    gave finite garbage: -2.12 at [2, 0, 0]); the other meshes of the batch are unaffected, and
    a NaN vertex no face uses changes nothing."""
    verts, faces = octahedron()
    batch = verts.expand(4, -1, -1).clone()
    batch[0, 2, 1] = float("nan")
    batch[1, 4, 0] = float("inf")
    batch = torch.cat([batch, torch.full((4, 1, 3), float("nan"), dtype=torch.float64)], 1)  # unused vertex
    points = torch.tensor([[2.0, 0, 0], [0.1, 0.1, 0.1]], dtype=torch.float64).expand(4, -1, -1)
    for builder in builders(device):
        for sign in ("none", "pseudonormal", "winding"):
            hit = omnifast.MeshIndex(faces).build(batch.to(device), builder=builder) \
                .closest_point(points.to(device), sign=sign)
            assert hit.face[:2].eq(-1).all() and hit.distance[:2].isnan().all() and hit.point[:2].isnan().all()
            inner = -(0.7 / 3 ** 0.5) if sign != "none" else 0.7 / 3 ** 0.5
            torch.testing.assert_close(hit.distance[2:].cpu(), torch.tensor([[1.0, inner]] * 2, dtype=torch.float64))
    want = ref.closest_point(points, batch, faces)
    assert want.face[:2].eq(-1).all() and want.distance[:2].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_huge_finite_queries(device):
    """A float32 query of 1e38 has a finite distance (its square overflows): it got NaN, face -1."""
    verts, faces = octahedron(torch.float32)
    points = torch.tensor([[1e38, 0, 0], [-3e38, 1e38, 0], [0, 0, 2], [0, -2e19, 1e19]], dtype=torch.float32)
    for sign in ("none", "pseudonormal", "winding"):
        hit = omnifast.closest_point(points.to(device), verts.to(device), faces.to(device), sign=sign)
        assert (hit.face >= 0).all() and hit.bary.isfinite().all() and (hit.distance > 0).all()
        want = ref.closest_point(points[None], verts[None], faces, sign="none")
        torch.testing.assert_close(hit.distance.cpu(), want.distance[0], rtol=1e-6, atol=0)
        # Far away every vertex is as near as any other to rounding: any point of the mesh will do.
        assert hit.point.isfinite().all() and (hit.point.abs().sum(-1) <= 1 + 1e-6).all()


# ---- gradients, interpolation and the index cache

@pytest.mark.parametrize("device", DEVICES)
def test_correspondence_gradcheck_canonical_verts(device):
    """canonical_points is differentiable with respect to canonical_verts through the normal
    term too (the analytic gradient was 0 where finite differences gave 0.42)."""
    verts, faces = blob(1, 1)
    canonical = (verts[0] * 0.9 + 0.01 * torch.randn_like(verts[0])).to(device).requires_grad_()
    points = queries(verts, 8).to(device)
    index = omnifast.MeshIndex(faces.to(device))
    for offset in ("normal", "none"):
        fn = lambda c: index.correspondence(points, verts.to(device), c, offset=offset).canonical_points  # noqa: E731,B023
        assert torch.autograd.gradcheck(fn, (canonical,), eps=1e-6, atol=1e-6)


def test_direct_op_call_is_differentiable():
    """The operator carries its own autograd: a direct call differentiates with respect to the
    points and the vertices as the Python API does."""
    verts, faces = blob(1, 1)
    index = omnifast.MeshIndex(faces)
    topology = index.topology("cpu", verts.shape[1])
    tree = torch.ops.omnifast.mesh_build(verts, topology, 0)
    points = queries(verts, 10).requires_grad_()
    v = verts.clone().requires_grad_()
    distance = torch.ops.omnifast.mesh_closest_point(points, v, topology, tree, 1)[0]
    distance.sum().backward()
    api_points, api_verts = points.detach().clone().requires_grad_(), verts.clone().requires_grad_()
    index.closest_point(api_points, api_verts).distance.sum().backward()
    torch.testing.assert_close(points.grad, api_points.grad)
    torch.testing.assert_close(v.grad, api_verts.grad)
    # (The tree holds the triangles: the vertex gradient assumes it was built from `verts`, so
    # finite differences of the vertices go through the API, which builds a tree per call.)
    assert torch.autograd.gradcheck(
        lambda p: torch.ops.omnifast.mesh_closest_point(p, verts, topology, tree, 1)[0],
        (points.detach().clone().requires_grad_(),), eps=1e-7, atol=1e-6)


def test_barycentric_interpolate_integer_values_and_missing_faces():
    faces = torch.tensor([[0, 1, 2]])
    values = torch.tensor([[0], [10], [20]])
    out = omnifast.barycentric_interpolate(values, faces, torch.tensor([0, -1]),
                                           torch.tensor([[0.2, 0.4, 0.4], [1.0, 0, 0]]))
    assert out.dtype == torch.float32
    assert out[0].item() == pytest.approx(12.0) and out[1].isnan().all()
    with pytest.raises(ValueError, match=r"face must hold face ids in \[0, 1\) or -1, got ids from 0 to 3"):
        omnifast.barycentric_interpolate(values, faces, torch.tensor([0, 3]), torch.rand(2, 3))
    with pytest.raises(ValueError, match="bary must be floating"):
        omnifast.barycentric_interpolate(values, faces, torch.tensor([0]), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="values must have a row per vertex"):
        omnifast.barycentric_interpolate(values[:2], faces, torch.tensor([0]), torch.rand(1, 3))
    # A non-finite query's closest point has no face: its interpolated value is NaN too.
    verts, octa = octahedron()
    hit = omnifast.closest_point(torch.tensor([[float("nan"), 0, 0]], dtype=torch.float64), verts, octa)
    assert omnifast.barycentric_interpolate(verts, octa, hit.face, hit.bary).isnan().all()


def test_free_functions_see_faces_edited_in_place():
    """Editing the face tensor through .data or .numpy() does not move its version counter; the
    free functions must still see the new faces."""
    verts, faces = octahedron()
    points = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    first = omnifast.closest_point(points, verts, faces)
    faces.numpy()[:] = faces.numpy()[:, ::-1]  # every face flipped: inside out
    second = omnifast.closest_point(points, verts, faces)
    torch.testing.assert_close(second.distance, -first.distance)
    faces.data[:4] = faces.data[4:]  # and again, through .data
    third = omnifast.closest_point(points, verts, faces)
    want = ref.closest_point(points[None], verts[None], faces)
    torch.testing.assert_close(third.distance, want.distance[0])


def test_correspondence_too_few_canonical_vertices():
    verts, faces = blob(1)
    with pytest.raises(ValueError, match="canonical_verts must have at least"):
        omnifast.correspondence(queries(verts, 4), verts, verts[0, :10], faces)
