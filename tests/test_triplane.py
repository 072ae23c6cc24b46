"""omnifast.triplane_sample against its references, in values, gradients and second derivatives."""
import pytest
import torch

import omnifast
from omnifast import reference

from conftest import DEVICES, KERNEL_DEVICES, poisoned_outputs, reseed_scheduler, simt_active, twin_and_kernels

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
AXES_2D = [None, "fixed", ((2, 1), (0, 2), (1, 0))]
AXES_3D = [None, ((2, 0, 1), (1, 0, 2), (0, 1, 2))]


def assert_close(actual, expected, rel):
    """Every element within rel of the reference, relative to the reference's scale."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert not actual.isnan().any(), "NaN in the result"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= rel * scale, f"max error {err:.3e} > {rel:.0e} x scale {scale:.3e}"


def make_planes(n, c, spatial, dtype, device):
    return torch.randn(n, 3, c, *spatial, dtype=dtype, device=device)


def make_coords(n, m, dtype, device, box=1.0):
    # 30% beyond the box on each side, so points fade out and fall off the planes too.
    return (torch.rand(n, m, 3, dtype=dtype, device=device) - 0.5) * 1.3 * box


def spatial_for(dims):
    return (6, 9) if dims == 2 else (3, 5, 4)  # H != W, D != H


def axes_cases():
    return [(2, a) for a in AXES_2D] + [(3, a) for a in AXES_3D]


# ---------------------------------------------------------------------------------------------
# Values and first derivatives against the grid_sample reference

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dims,axes", axes_cases())
@pytest.mark.parametrize("reduce", ["mean", "sum", "none"])
def test_forward_and_gradients_match_reference(device, dtype, dims, axes, reduce):
    box_warp = 1.7
    planes = make_planes(2, 7, spatial_for(dims), dtype, device).requires_grad_()
    coords = make_coords(2, 300, dtype, device, box_warp).requires_grad_()
    kwargs = dict(box_warp=box_warp, reduce=reduce, axes=axes)
    out = omnifast.triplane_sample(planes, coords, **kwargs)
    ref = reference.triplane_sample(planes, coords, **kwargs)
    assert out.is_contiguous()
    assert_close(out, ref, TOL[dtype])
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (planes, coords), grad_out)
    ref_grads = torch.autograd.grad(ref, (planes, coords), grad_out)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, TOL[dtype])


def second_order_reference(planes):
    """The reference for second derivatives: grid_sample's exist on the CPU only (torch has
    none for its CUDA kernel), and the gather form computes the same function anywhere."""
    return reference.triplane_sample_gather if planes.is_cuda else reference.triplane_sample


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims,axes", axes_cases())
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_second_derivatives_match_reference(device, dims, axes, reduce):
    """d/d(planes, coords) of <d out/d coords, v>: what an eikonal loss through a tri-plane needs."""
    dtype = torch.float64
    planes = make_planes(2, 5, spatial_for(dims), dtype, device).requires_grad_()
    coords = make_coords(2, 200, dtype, device).requires_grad_()
    grad_out_shape = (2, 3, 200, 5) if reduce == "none" else (2, 200, 5)
    grad_out = torch.randn(grad_out_shape, dtype=dtype, device=device, requires_grad=True)
    direction = torch.randn_like(coords)
    results = []
    fns = (omnifast.triplane_sample, reference.triplane_sample_gather)
    if not planes.is_cuda:  # torch's grid_sample has second derivatives on the CPU alone
        fns += (reference.triplane_sample,)
    for fn in fns:
        out = fn(planes, coords, reduce=reduce, axes=axes)
        grad_planes, grad_coords = torch.autograd.grad(out, (planes, coords), grad_out,
                                                       create_graph=True)
        loss = (grad_coords * direction).sum() + (grad_planes * grad_planes.detach()).sum()
        results.append(torch.autograd.grad(loss, (planes, coords, grad_out)))
    for ours, *references in zip(*results):
        for theirs in references:
            assert_close(ours, theirs, 1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_second_derivative_of_plane_gradient_alone(device):
    """A loss on the plane gradient only, with fixed coordinates: its derivative reaches
    grad_out, while the planes' own derivative is exactly zero and must be written as zeros."""
    planes = make_planes(2, 4, (5, 6), torch.float64, device).requires_grad_()
    coords = make_coords(2, 80, torch.float64, device)
    grad_out = torch.randn(2, 80, 4, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for fn in (omnifast.triplane_sample, second_order_reference(planes)):
        (grad_planes,) = torch.autograd.grad(fn(planes, coords), planes, grad_out,
                                             create_graph=True)
        with poisoned_outputs():
            results.append(torch.autograd.grad((grad_planes ** 2).sum(), (planes, grad_out),
                                               allow_unused=True, materialize_grads=True))
    for ours, ref in zip(*results):
        assert_close(ours, ref, 1e-10)
    assert torch.equal(results[0][0], torch.zeros_like(planes))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("reduce", ["mean", "sum", "none"])
def test_gradcheck_and_gradgradcheck(dims, reduce):
    planes = make_planes(1, 3, (4, 5) if dims == 2 else (2, 3, 4), torch.float64, "cpu")
    coords = make_coords(1, 12, torch.float64, "cpu")
    planes.requires_grad_()
    coords.requires_grad_()

    def fn(p, x):
        return omnifast.triplane_sample(p, x, reduce=reduce, box_warp=1.3)

    assert torch.autograd.gradcheck(fn, (planes, coords), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (planes, coords), eps=1e-6, atol=1e-6)


def test_gradgradcheck_through_backward_op_alone():
    """The backward op's own derivatives, including with respect to grad_out."""
    planes = make_planes(1, 3, (4, 5), torch.float64, "cpu").requires_grad_()
    coords = make_coords(1, 10, torch.float64, "cpu").requires_grad_()
    grad_out = torch.randn(1, 10, 3, dtype=torch.float64, requires_grad=True)

    def backward(g, p, x):
        return torch.ops.omnifast.triplane_sample_backward(
            g, p.movedim(2, -1).contiguous(), x, [0, 1, 0, 2, 2, 0], [2.0, 2.0, 2.0], 2, True, True)

    assert torch.autograd.gradcheck(backward, (grad_out, planes, coords), eps=1e-6, atol=1e-6)


def test_third_derivative_raises_clearly():
    planes = make_planes(1, 2, (4, 4), torch.float64, "cpu").requires_grad_()
    coords = make_coords(1, 5, torch.float64, "cpu").requires_grad_()
    out = omnifast.triplane_sample(planes, coords)
    (g1,) = torch.autograd.grad(out.sum(), coords, create_graph=True)
    (g2,) = torch.autograd.grad((g1 ** 2).sum(), coords, create_graph=True)
    with pytest.raises(NotImplementedError, match="third derivative"):
        torch.autograd.grad(g2.sum(), coords)


# ---------------------------------------------------------------------------------------------
# Shapes, layouts and special points

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,c,spatial,m", [
    (1, 1, (1, 1), 9),            # single texel, single channel
    (1, 5, (7, 3), 20),           # C not a multiple of 4, H != W
    (3, 33, (4, 6), 17),          # C over one chunk of channels
    (2, 4, (5, 5), 0),            # no points
    (1, 3, (1, 4, 4), 15),        # a depth-1 tri-grid: trilinear, not a plain plane
    (2, 6, (2, 3, 5), 11),
])
def test_odd_shapes(device, n, c, spatial, m):
    planes = make_planes(n, c, spatial, torch.float64, device).requires_grad_()
    coords = make_coords(n, m, torch.float64, device).requires_grad_()
    out = omnifast.triplane_sample(planes, coords)
    ref = reference.triplane_sample(planes, coords)
    assert_close(out, ref, 1e-10)
    grads = torch.autograd.grad(out, (planes, coords), torch.ones_like(out))
    ref_grads = torch.autograd.grad(ref, (planes, coords), torch.ones_like(ref))
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
def test_texel_centres_edges_and_box_border(device, dims):
    """Pixel positions on exact integers and half-integers, and grid coordinates at +-1 and at
    the far edge of the half-texel fade, where floor() and the weights change branch."""
    size = 8
    spatial = (size,) * dims
    planes = make_planes(1, 4, spatial, torch.float64, device).requires_grad_()
    centres = (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1
    edges = 2 * torch.arange(size + 1, dtype=torch.float64) / size - 1
    special = torch.cat([centres, edges, torch.tensor([-1 - 1 / size, 1 + 1 / size, 1.0, -1.0,
                                                        1.5, -3.0], dtype=torch.float64)])
    grid = torch.stack(torch.meshgrid(special, special, special[::3], indexing="ij"), -1)
    coords = (grid.reshape(1, -1, 3) / 2).to(device).requires_grad_()  # world = grid / 2
    out = omnifast.triplane_sample(planes, coords, reduce="none")
    ref = reference.triplane_sample(planes, coords, reduce="none")
    assert_close(out, ref, 1e-12)
    grad_out = torch.randn_like(ref)
    for g, r in zip(torch.autograd.grad(out, (planes, coords), grad_out),
                    torch.autograd.grad(ref, (planes, coords), grad_out)):
        assert_close(g, r, 1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_points_outside_the_box_give_zero_and_non_finite_give_nan(device):
    """Finite points outside the box read nothing (zero features); a non-finite coordinate gives
    NaN features and a NaN coordinate gradient, as EG3D's projection and grid_sample do, instead
    of hiding an upstream NaN as zeros (it did)."""
    planes = make_planes(1, 3, (5, 5), torch.float32, device)
    far = torch.tensor([[[5.0, 0, 0], [0, -7.0, 0], [1e30, 1e30, 1e30], [-1e38, 2e38, 0],
                         [float("inf"), 0, 0], [float("nan"), float("nan"), float("nan")],
                         [0.1, float("nan"), 0.2]]], device=device)
    out = omnifast.triplane_sample(planes, far, reduce="none")
    # One plane of the first two points may still see them (e.g. x=5 lies off every plane but
    # y=-7 only off those that read y); compare with the reference where it is finite.
    ref = reference.triplane_sample(planes, far[:, :2], reduce="none")
    assert_close(out[:, :, :2], ref, 1e-6)
    assert torch.equal(out[:, :, 2:4], torch.zeros_like(out[:, :, 2:4]))
    assert out[:, :, 4:].isnan().all()
    for shape in ((5, 5), (3, 5, 5)):  # planes and volumes, through every backward path
        p = make_planes(1, 3, shape, torch.float64, device).requires_grad_()
        x = far.double().clone().requires_grad_()
        for reduce in ("mean", "none"):
            features = omnifast.triplane_sample(p, x, reduce=reduce)
            torch.testing.assert_close(features.isnan(), reference.triplane_sample(p, x, reduce=reduce).isnan())
            grad_p, grad_x = torch.autograd.grad(features.sum(), (p, x), create_graph=True)
            assert grad_x[0, 4:].isnan().all() and grad_x[0, :4].isfinite().all()
            assert grad_p.isfinite().all()  # a NaN point adds nothing to any texel
            (gg_x,) = torch.autograd.grad(grad_x[:, :4].sum(), x, allow_unused=True)
            assert gg_x[0, 4:].isnan().all() and gg_x[0, :4].isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
def test_any_strides_in_contiguous_out(device):
    base = torch.randn(2, 6, 9, 3, 8, dtype=torch.float64, device=device)
    planes = base.permute(0, 3, 4, 1, 2)[:, :, ::2]       # [2, 3, 4, 6, 9], channels strided
    feature_last = torch.randn(2, 3, 6, 9, 4, dtype=torch.float64, device=device).movedim(-1, 2)
    coords = make_coords(2, 40, torch.float64, device).transpose(0, 1).contiguous().transpose(0, 1)
    coords = torch.cat([coords, coords], dim=2)[..., ::2]  # strided last dim
    for p in (planes, feature_last):
        out = omnifast.triplane_sample(p, coords, reduce="none")
        assert out.is_contiguous()
        assert_close(out, reference.triplane_sample(p, coords, reduce="none"), 1e-10)
    # An expanded upstream gradient, as .sum() produces.
    p = planes.detach().requires_grad_()
    c = coords.detach().requires_grad_()
    grads = torch.autograd.grad(omnifast.triplane_sample(p, c).sum(), (p, c))
    ref_grads = torch.autograd.grad(reference.triplane_sample(p, c).sum(), (p, c))
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_every_output_element_is_written(device, dims, reduce):
    """Forward, backward and double backward under NaN-filled allocations."""
    planes = make_planes(2, 5, spatial_for(dims), torch.float64, device).requires_grad_()
    coords = make_coords(2, 64, torch.float64, device).requires_grad_()
    with poisoned_outputs():
        out = omnifast.triplane_sample(planes, coords, reduce=reduce)
        grad_out = torch.randn_like(out).requires_grad_()
        grads = torch.autograd.grad(out, (planes, coords), grad_out, create_graph=True)
        second = torch.autograd.grad((grads[1] ** 2).sum() + grads[0].sum(),
                                     (planes, coords, grad_out))
    ref = second_order_reference(planes)(planes, coords, reduce=reduce)
    ref_grads = torch.autograd.grad(ref, (planes, coords), grad_out, create_graph=True)
    ref_second = torch.autograd.grad((ref_grads[1] ** 2).sum() + ref_grads[0].sum(),
                                     (planes, coords, grad_out))
    for ours, theirs in zip((out, *grads, *second), (ref, *ref_grads, *ref_second)):
        assert_close(ours, theirs, 1e-10)


def test_float64_box_warp_per_axis_and_scaling():
    planes = make_planes(1, 4, (8, 8), torch.float64, "cpu")
    coords = make_coords(1, 100, torch.float64, "cpu", box=2.0)
    out = omnifast.triplane_sample(planes, coords, box_warp=(2.0, 1.0, 3.0))
    ref = reference.triplane_sample(planes, coords, box_warp=(2.0, 1.0, 3.0))
    assert_close(out, ref, 1e-10)
    # A per-axis box is the same as pre-scaling the coordinates.
    scaled = coords / torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    assert_close(out, omnifast.triplane_sample(planes, scaled, box_warp=1.0), 1e-12)


def test_eg3d_axes_quirk_is_reproduced():
    """Plane 2 of EG3D reads (z, x): its u (width) axis follows z. With the fixed axes it follows
    z too, but plane 1 then reads (y, z) instead of (x, z)."""
    planes = torch.zeros(1, 3, 1, 4, 4, dtype=torch.float64)
    planes[0, :, 0] = torch.arange(4, dtype=torch.float64).expand(4, 4)  # value = column index
    point = torch.tensor([[[0.0, 0.3, -0.3]]], dtype=torch.float64)  # x centre, y +, z -
    eg3d = omnifast.triplane_sample(planes, point, reduce="none")[0, :, 0, 0]
    fixed = omnifast.triplane_sample(planes, point, reduce="none", axes="fixed")[0, :, 0, 0]
    column = lambda c: ((c * 2 + 1) * 4 - 1) / 2  # noqa: E731  (pixel position along W)
    assert torch.allclose(eg3d, torch.tensor([column(0.0), column(0.0), column(-0.3)],
                                              dtype=torch.float64))
    assert torch.allclose(fixed, torch.tensor([column(0.0), column(0.3), column(-0.3)],
                                               dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Determinism

def test_cpu_backward_is_bitwise_reproducible():
    planes = make_planes(2, 8, (16, 16), torch.float32, "cpu").requires_grad_()
    coords = make_coords(2, 5000, torch.float32, "cpu").requires_grad_()
    grad_out = torch.randn(2, 5000, 8)
    first = torch.autograd.grad(omnifast.triplane_sample(planes, coords), (planes, coords), grad_out)
    for _ in range(3):
        again = torch.autograd.grad(omnifast.triplane_sample(planes, coords), (planes, coords),
                                    grad_out)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def row_walk_inputs(dims, reduce, device, m=400):
    planes = make_planes(2, 6, spatial_for(dims), torch.float64, device)
    coords = make_coords(2, m, torch.float64, device)
    out_shape = (2, 3, m, 6) if reduce == "none" else (2, m, 6)
    grad_out = torch.randn(out_shape, dtype=torch.float64, device=device)
    axes = [i for plane in omnifast.ops.triplane.resolve_axes(None, dims) for i in plane]
    code = omnifast.ops.triplane.REDUCE[reduce]
    return grad_out, planes.movedim(2, -1).contiguous(), coords, axes, [2.0, 2.0, 2.0], code


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_row_walk_plane_gradient_matches_backward(device, dims, reduce):
    """The fixed-order plane gradient (CUDA's deterministic path) against the backward's, for
    the first and the second derivative, run twice for bitwise equality."""
    grad_out, planes, coords, axes, scale, code = row_walk_inputs(dims, reduce, device)
    grad_grad_coords = torch.randn_like(coords)
    with poisoned_outputs():
        rows = torch.ops.omnifast.triplane_sample_plane_grad_rows(
            grad_out, planes, coords, None, axes, scale, code)
        rows_second = torch.ops.omnifast.triplane_sample_plane_grad_rows(
            grad_out, planes, coords, grad_grad_coords, axes, scale, code)
    expected, _ = torch.ops.omnifast.triplane_sample_backward(
        grad_out, planes, coords, axes, scale, code, True, False)
    _, expected_second, _ = torch.ops.omnifast.triplane_sample_double_backward(
        None, grad_grad_coords, grad_out, planes, coords, axes, scale, code, False, True, False)
    assert_close(rows, expected, 1e-12)
    assert_close(rows_second, expected_second, 1e-12)
    again = torch.ops.omnifast.triplane_sample_plane_grad_rows(
        grad_out, planes, coords, None, axes, scale, code)
    assert torch.equal(rows, again)


def test_row_walk_with_points_off_the_planes_and_none_at_all():
    grad_out, planes, coords, axes, scale, code = row_walk_inputs(2, "mean", "cpu", m=50)
    coords[:, ::3] = 10.0  # no corner on any plane: the keys' sentinel
    expected, _ = torch.ops.omnifast.triplane_sample_backward(
        grad_out, planes, coords, axes, scale, code, True, False)
    rows = torch.ops.omnifast.triplane_sample_plane_grad_rows(
        grad_out, planes, coords, None, axes, scale, code)
    assert_close(rows, expected, 1e-12)
    empty = torch.ops.omnifast.triplane_sample_plane_grad_rows(
        grad_out[:, :0], planes, coords[:, :0], None, axes, scale, code)
    assert torch.equal(empty, torch.zeros_like(planes))


def test_row_walk_opcheck():
    grad_out, planes, coords, axes, scale, code = row_walk_inputs(3, "mean", "cpu", m=30)
    torch.library.opcheck(torch.ops.omnifast.triplane_sample_plane_grad_rows,
                          (grad_out, planes, coords, torch.randn_like(coords), axes, scale, code),
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------------------------------------
# Many chunks, one plane gradient: the accumulating backward and SharedPlanes

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("deterministic", [False, True])
def test_plane_grad_add_adds_the_backward_plane_gradient(device, dims, deterministic):
    """Into a buffer holding an earlier sum, as the backward's plane gradient is (CUDA's
    deterministic mode: the row walk, adding too)."""
    grad_out, planes, coords, axes, scale, code = row_walk_inputs(dims, "mean", device)
    expected, _ = torch.ops.omnifast.triplane_sample_backward(
        grad_out, planes, coords, axes, scale, code, True, False)
    earlier = torch.randn_like(planes)
    buffer = earlier.clone()
    torch.use_deterministic_algorithms(deterministic)
    try:
        torch.ops.omnifast.triplane_sample_plane_grad_add_(buffer, grad_out, coords, axes, scale, code)
    finally:
        torch.use_deterministic_algorithms(False)
    assert_close(buffer, earlier + expected, 1e-12)


def test_plane_grad_add_checks_its_buffer():
    grad_out, planes, coords, axes, scale, code = row_walk_inputs(2, "mean", "cpu", m=20)
    add = torch.ops.omnifast.triplane_sample_plane_grad_add_
    with pytest.raises(RuntimeError, match=r"grad_out must be of shape \[2, 20, 5\], got \[2, 20, 6\]"):
        add(torch.zeros(2, 3, 6, 9, 5, dtype=torch.float64), grad_out, coords, axes, scale, code)
    with pytest.raises(RuntimeError, match=r"grad_planes must be feature-last .*, got \[2, 6, 9, 6\]"):
        add(torch.zeros(2, 6, 9, 6, dtype=torch.float64), grad_out, coords, axes, scale, code)
    with pytest.raises(RuntimeError, match=r"grad_planes must be of the accumulation type of grad_out "
                                           r"\(Double\), got Float"):
        add(torch.zeros(planes.shape), grad_out, coords, axes, scale, code)
    with pytest.raises(RuntimeError, match=r"grad_planes must be contiguous, got strides"):
        add(torch.zeros(2, 3, 6, 6, 9, dtype=torch.float64).transpose(2, 3).transpose(3, 4).transpose(2, 3)
            .contiguous().transpose(2, 3), grad_out, coords, axes, scale, code)
    with pytest.raises(RuntimeError, match=r"coords must be \[N, M, 3\] with N = 2"):
        add(torch.zeros_like(planes), grad_out, coords[:1], axes, scale, code)
    torch.library.opcheck(add, (torch.zeros_like(planes), grad_out, coords, axes, scale, code),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("recompute", [False, True])
def test_shared_planes_chunks_give_the_whole_gradient(device, dtype, dims, recompute):
    """Chunks sampled from SharedPlanes (each recomputed in the backward under
    torch.utils.checkpoint, as the renderer runs them) give triplane_sample's values and
    gradients on the whole, for planes in any layout."""
    box_warp = 1.7
    planes = make_planes(2, 7, spatial_for(dims), dtype, device).requires_grad_()
    coords = make_coords(2, 300, dtype, device, box_warp).requires_grad_()
    whole = omnifast.triplane_sample(planes, coords, box_warp=box_warp)
    grad_out = torch.randn_like(whole)
    expected = torch.autograd.grad(whole, (planes, coords), grad_out)

    shared = omnifast.SharedPlanes(planes, box_warp=box_warp)
    parts = [torch.utils.checkpoint.checkpoint(shared.sample, part, use_reentrant=False) if recompute
             else shared.sample(part) for part in coords.split(70, 1)]
    out = torch.cat(parts, 1)
    assert_close(out, whole, TOL[dtype])
    grads = torch.autograd.grad(out, (planes, coords), grad_out)
    for g, e in zip(grads, expected):
        assert_close(g, e, TOL[dtype])
    assert shared.buffer.grad is None  # handed over, not kept

    # Released before the backward (as the renderer does), the recomputed chunks make their own
    # copies; a copy given by the caller (Renderer.prepare) is used until then.
    copy = planes.detach().movedim(2, -1).contiguous().movedim(-1, 2)
    shared = omnifast.SharedPlanes(planes, box_warp=box_warp, prepared=copy)
    assert shared.held.data_ptr() == copy.data_ptr()
    out = torch.cat([torch.utils.checkpoint.checkpoint(shared.sample, part, use_reentrant=False)
                     for part in coords.split(70, 1)], 1)
    shared.release()
    grads = torch.autograd.grad(out, (planes, coords), grad_out)
    for g, e in zip(grads, expected):
        assert_close(g, e, TOL[dtype])

    # A feature-last (prepared) input is used without a copy, and grads reach it all the same.
    prepared = planes.detach().movedim(2, -1).contiguous().movedim(-1, 2).requires_grad_()
    shared = omnifast.SharedPlanes(prepared, box_warp=box_warp)
    assert shared.held.data_ptr() == prepared.data_ptr()
    (grad,) = torch.autograd.grad(torch.cat([shared.sample(p) for p in coords.detach().split(70, 1)], 1),
                                  prepared, grad_out)
    assert_close(grad, expected[0], TOL[dtype])


def test_shared_planes_without_gradients_and_bad_input():
    planes, coords = make_planes(1, 4, (5, 5), torch.float64, "cpu"), make_coords(1, 30, torch.float64, "cpu")
    out = omnifast.SharedPlanes(planes).sample(coords)
    assert not out.requires_grad
    assert torch.equal(out, omnifast.triplane_sample(planes, coords))
    with pytest.raises(ValueError, match=r"SharedPlanes: planes must be \[N, 3, C, H, W\]"):
        omnifast.SharedPlanes(planes[:, :2])
    with pytest.raises(ValueError, match=r"SharedPlanes.sample: coords must be \[N, M, 3\] with N = 1"):
        omnifast.SharedPlanes(planes).sample(coords.expand(2, -1, -1))
    with pytest.raises(ValueError, match=r"SharedPlanes: box_warp must be a positive number"):
        omnifast.SharedPlanes(planes, box_warp=0)
    with pytest.raises(ValueError, match=r"SharedPlanes: prepared must be a copy of planes \[1, 3, 4, 5, 5\], "
                                         r"got \[1, 3, 4, 5, 6\]"):
        omnifast.SharedPlanes(planes, prepared=torch.zeros(1, 3, 4, 5, 6))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
def test_cuda_deterministic_mode_is_bitwise_reproducible(device, dims):
    # Thread by thread on the CPU, a smaller problem; there each gradient below runs in another
    # scheduling order, so the atomics' summation order differs between the runs.
    m = 1500 if simt_active() else 20000
    planes = make_planes(2, 32, (64, 64) if dims == 2 else (3, 32, 32), torch.float32, device)
    planes.requires_grad_()
    coords = make_coords(2, m, torch.float32, device).requires_grad_()
    grad_out = torch.randn(2, m, 32, device=device)
    direction = torch.randn_like(coords)

    def gradients(seed):
        reseed_scheduler(seed)
        out = omnifast.triplane_sample(planes, coords)
        gp, gc = torch.autograd.grad(out, (planes, coords), grad_out, create_graph=True)
        (second,) = torch.autograd.grad((gc * direction).sum(), planes)
        return gp, second

    fast = gradients(1)
    torch.use_deterministic_algorithms(True)
    try:
        first, again = gradients(2), gradients(3)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b, f in zip(first, again, fast):
        assert torch.equal(a, b)
        assert_close(a, f, 1e-5)


# ---------------------------------------------------------------------------------------------
# CUDA: 16-bit planes and parity with the CPU twin

@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dims", [2, 3])
def test_cuda_16bit_planes_accumulate_in_float32(device, dtype, dims):
    planes = make_planes(2, 32, spatial_for(dims), torch.float32, device)
    coords = make_coords(2, 500, torch.float32, device).requires_grad_()
    planes16 = planes.to(dtype).requires_grad_()
    out = omnifast.triplane_sample(planes16, coords)
    assert out.dtype == dtype
    ref = reference.triplane_sample(planes16.detach().float(), coords.detach())
    rel = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert_close(out.float(), ref, rel)
    grad_planes, grad_coords = torch.autograd.grad(out, (planes16, coords), torch.ones_like(out))
    assert grad_planes.dtype == dtype and grad_coords.dtype == torch.float32
    p = planes16.detach().float().requires_grad_()
    c = coords.detach().requires_grad_()
    ref_grads = torch.autograd.grad(reference.triplane_sample(p, c), (p, c),
                                    torch.ones_like(ref))
    assert_close(grad_planes.float(), ref_grads[0], rel)
    assert_close(grad_coords, ref_grads[1], 5 * rel)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
def test_cuda_matches_cpu_twin(device, dims):
    planes = make_planes(2, 19, spatial_for(dims), torch.float64, "cpu").requires_grad_()
    coords = make_coords(2, 700, torch.float64, "cpu").requires_grad_()
    direction = torch.randn_like(coords)
    results = []
    for target, context in twin_and_kernels(device):
        with context():
            p = planes.detach().to(target).requires_grad_()
            c = coords.detach().to(target).requires_grad_()
            out = omnifast.triplane_sample(p, c, reduce="none")
            gp, gc = torch.autograd.grad(out, (p, c), torch.ones_like(out), create_graph=True)
            second = torch.autograd.grad((gc * direction.to(target)).sum(), (p, c))
        results.append([t.detach().cpu() for t in (out, gp, gc, *second)])
    for cpu, cuda in zip(*results):
        assert_close(cuda, cpu, 1e-10)
