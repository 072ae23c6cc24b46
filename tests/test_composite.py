"""omnifast.composite against the MipRayMarcher2 reference: values and every gradient."""
import pytest
import torch
from test_triplane import assert_close

import omnifast
from omnifast import reference

from conftest import DEVICES, KERNEL_DEVICES, poisoned_outputs, twin_and_kernels

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
FIELDS = ["sdf", "sdf_laplace", "density"]
MODES = ["midpoint", "absorption"]


def make_rays(lead, samples, channels, dtype, device, field="sdf", sdf_scale=0.05):
    features = torch.randn(*lead, samples, channels, dtype=dtype, device=device)
    if field == "density":
        values = torch.randn(*lead, samples, 1, dtype=dtype, device=device) * 5
    else:  # signed distances around a surface crossing the rays
        values = torch.randn(*lead, samples, 1, dtype=dtype, device=device) * sdf_scale
    depths = torch.sort(torch.rand(*lead, samples, 1, dtype=dtype, device=device) * 1.05 + 2.25,
                        dim=-2)[0]
    delta = torch.randn(*lead, samples, 1, dtype=dtype, device=device)
    return features, values, depths, delta


def compare(inputs, beta, dtype, rel=None, where_reference_finite=False, **kwargs):
    """Values and the gradients of a random linear loss on every output, ours vs reference.

    `where_reference_finite`: rays of zero opacity give the reference NaN gradients (its depth
    is 0 / 0 before nan_to_num); ours are finite there, and the rest must match."""
    features, field, depths, delta = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (features, field, depths, delta)]
    beta_leaf = (torch.tensor([beta], dtype=field.dtype, device=field.device, requires_grad=True)
                 if kwargs.get("field_type", "sdf") != "density" else None)
    wrt = leaves + ([beta_leaf] if beta_leaf is not None else [])
    # The reference runs in float64 on the same values: float32 results are then held to
    # their own rounding, not to the sum of both implementations' rounding.
    wrt64 = [t.detach().double().requires_grad_() for t in wrt]
    ours = omnifast.composite(*leaves[:3], beta=beta_leaf, density_delta=leaves[3],
                              return_weights=True, **kwargs)
    ref = reference.composite(*wrt64[:3], beta=wrt64[4] if beta_leaf is not None else None,
                              density_delta=wrt64[3], return_weights=True, **kwargs)
    upstream = [torch.randn_like(t) for t in ref]
    grads = torch.autograd.grad(sum((t * g.to(t)).sum() for t, g in zip(ours, upstream)), wrt)
    ref_grads = torch.autograd.grad(sum((t * g).sum() for t, g in zip(ref, upstream)), wrt64)
    rel = rel or TOL[dtype]
    for a, b in zip((*ours, *grads), (*ref, *ref_grads)):
        if where_reference_finite:
            assert torch.isfinite(a).all()
            finite = torch.isfinite(b)
            a, b = a[finite], b[finite]
        assert_close(a, b.to(a.dtype), rel)
    return ours


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("field_type", FIELDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("white_back", [False, True])
def test_matches_reference(device, dtype, field_type, mode, white_back):
    inputs = make_rays((2, 33), 24, 7, dtype, device, field=field_type)
    compare(inputs, 0.02, dtype, field_type=field_type, mode=mode, white_back=white_back)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("field_type", ["sdf", "sdf_laplace"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("beta,sdf_scale", [(1e-3, 0.05), (1e-3, 5.0), (10.0, 0.05)])
def test_sharp_and_soft_surfaces(device, dtype, field_type, mode, beta, sdf_scale):
    """OmniAvatar's initial beta (alpha -> 1 at the surface), SDF values far from zero (the
    exponentials underflow), and a large beta (nearly transparent)."""
    inputs = make_rays((40,), 32, 5, dtype, device, sdf_scale=sdf_scale)
    compare(inputs, beta, dtype, field_type=field_type, mode=mode)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
def test_empty_and_opaque_rays(device, dtype, mode):
    features, _, depths, delta = make_rays((6,), 16, 3, dtype, device, field="density")
    density = torch.full_like(depths, -1e4)          # softplus(-1e4) = 0: nothing at all
    density[2:4] = 1e4                               # opaque from the first interval on
    density[4, 8:] = 50.0                            # a hard wall half-way
    out = compare((features, density, depths, delta * 0), 1.0, dtype,
                  where_reference_finite=True, field_type="density", mode=mode)
    assert torch.equal(out.opacity[:2], torch.zeros_like(out.opacity[:2]))
    assert torch.equal(out.depth[:2], depths.max().expand(2, 1))  # NaN -> inf -> global max
    assert torch.allclose(out.opacity[2:4], torch.ones_like(out.opacity[2:4]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("samples,channels,mode", [(2, 1, "midpoint"), (2, 1, "absorption"),
                                                    (2, 33, "absorption"), (5, 0, "midpoint"),
                                                    (7, 45, "midpoint")])
def test_small_shapes(device, dtype, samples, channels, mode):
    inputs = make_rays((3, 2), samples, channels, dtype, device)
    compare(inputs, 0.05, dtype, mode=mode)


def test_field_given_without_trailing_one_and_many_rays():
    features, field, depths, delta = make_rays((2, 20000), 6, 2, torch.float32, "cpu")
    ours = omnifast.composite(features, field[..., 0], depths[..., 0], beta=0.02,
                              return_weights=True)
    ref = reference.composite(features, field[..., 0], depths[..., 0], beta=0.02,
                              return_weights=True)
    assert ours.weights.shape == (2, 20000, 5)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-5)


def test_large_gradients_match():
    """A feature gradient of 16 MiB: large CPU outputs are allocated with a huge-page hint and
    must still be written whole and right."""
    inputs = make_rays((4096,), 32, 32, torch.float32, "cpu")
    compare(inputs, 0.02, torch.float32)


@pytest.mark.parametrize("field_type", FIELDS)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(field_type, mode):
    features, field, depths, delta = make_rays((3,), 6, 2, torch.float64, "cpu", field=field_type)
    beta = torch.tensor([0.05], dtype=torch.float64, requires_grad=field_type != "density")
    leaves = [t.requires_grad_() for t in (features, field, depths, delta)]

    def fn(f, s, z, d, b):
        out = omnifast.composite(f, s, z, field_type=field_type, beta=b, density_delta=d,
                                 mode=mode, return_weights=True)
        return out.features, out.depth, out.opacity, out.weights

    assert torch.autograd.gradcheck(fn, (*leaves, beta), eps=1e-6, atol=1e-6)


def test_second_derivative_raises_clearly():
    features, field, depths, _ = make_rays((2,), 4, 2, torch.float64, "cpu")
    field.requires_grad_()
    out = omnifast.composite(features, field, depths, beta=0.1)
    (grad,) = torch.autograd.grad(out.features.sum(), field, create_graph=True)
    with pytest.raises(NotImplementedError, match="differentiable once"):
        torch.autograd.grad(grad.sum(), field)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_every_output_element_is_written(device, mode):
    inputs = [t.requires_grad_() for t in make_rays((4, 5), 9, 6, torch.float64, device)]
    beta = torch.tensor([0.03], dtype=torch.float64, device=device, requires_grad=True)
    with poisoned_outputs():
        out = omnifast.composite(*inputs[:3], beta=beta, density_delta=inputs[3], mode=mode,
                                 return_weights=True)
        grads = torch.autograd.grad(sum(t.sum() for t in out), (*inputs, beta))
    for t in (*out, *grads):
        assert not t.isnan().any()


# ---------------------------------------------------------------------------------------------
# Registration and bad input

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", [0, 1])
def test_opcheck(device, mode):
    features, field, depths, delta = make_rays((5,), 7, 3, torch.float64, device)
    field, depths, delta = field[..., 0], depths[..., 0], delta[..., 0]
    beta = torch.tensor([0.05], dtype=torch.float64, device=device)
    for requires_grad in (False, True):
        args = [t.clone().requires_grad_(requires_grad) for t in (features, field, depths, beta, delta)]
        torch.library.opcheck(torch.ops.omnifast.composite, (*args, 0, mode, True))
    samples = 7 if mode == 1 else 6
    grads = (torch.randn(5, 3, dtype=torch.float64, device=device),
             torch.randn(5, dtype=torch.float64, device=device),
             torch.randn(5, dtype=torch.float64, device=device),
             torch.randn(5, samples, dtype=torch.float64, device=device))
    _, opacity, depth_raw, _, log_t = torch.ops.omnifast.composite(features, field, depths, beta,
                                                                   delta, 0, mode, False)
    torch.library.opcheck(torch.ops.omnifast.composite_backward,
                          (*grads, features, field, depths, beta, delta, opacity, depth_raw,
                           log_t, 0, mode), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
def test_depth_without_the_global_clamp(device):
    features, field, depths, _ = make_rays((2, 5), 8, 3, torch.float64, device)
    depths[1, 0, 0, 0] = float("nan")  # one NaN depth: EG3D's clamp spreads it to every ray
    clamped = omnifast.composite(features, field, depths, beta=0.01)
    assert torch.isnan(clamped.depth).all()
    outs = [impl(features, field, depths, beta=0.01, clamp_depth=False)
            for impl in (omnifast.composite, reference.composite)]
    for out in outs:
        assert not torch.isfinite(out.depth[1, 0]).any()
        assert torch.isfinite(out.depth[0]).all() and torch.isfinite(out.depth[1, 1:]).all()
    torch.testing.assert_close(outs[0].depth, outs[1].depth, equal_nan=True)


@pytest.mark.parametrize("device", KERNEL_DEVICES[:1])  # two devices: a GPU beside the CPU
def test_every_saved_tensor_of_the_backward_is_checked_for_its_device(device):
    features, field, depths, delta = (t.reshape(5, 6, -1).contiguous()
                                      for t in make_rays((5,), 6, 3, torch.float64, device))
    field, depths, delta = field[..., 0], depths[..., 0], delta[..., 0]
    beta = torch.tensor([0.05], dtype=torch.float64, device=device)
    _, opacity, depth_raw, _, log_t = torch.ops.omnifast.composite(features, field, depths, beta,
                                                                   delta, 0, 0, False)
    grads = (torch.randn(5, 3, dtype=torch.float64, device=device),
             torch.randn(5, dtype=torch.float64, device=device),
             torch.randn(5, dtype=torch.float64, device=device), None)
    saved = {"opacity": opacity, "depth_raw": depth_raw, "log_transmittance": log_t}
    for name in saved:
        moved = {k: (v.cpu() if k == name else v) for k, v in saved.items()}
        with pytest.raises(RuntimeError, match=f"{name} must be on the device of features"):
            torch.ops.omnifast.composite_backward(*grads, features, field, depths, beta, delta,
                                                  moved["opacity"], moved["depth_raw"],
                                                  moved["log_transmittance"], 0, 0)


def test_torch_compile_fullgraph():
    features, field, depths, delta = make_rays((3, 10), 8, 4, torch.float32, "cpu")
    features.requires_grad_()
    field.requires_grad_()
    beta = torch.tensor([0.05], requires_grad=True)

    def render(f, s, b):
        out = omnifast.composite(f, s, depths, beta=b, white_back=True)
        return (out.features ** 2).mean() + out.depth.mean()

    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    loss = compiled(features, field, beta)
    grads = torch.autograd.grad(loss, (features, field, beta))
    ref_loss = render(features, field, beta)
    ref_grads = torch.autograd.grad(ref_loss, (features, field, beta))
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def rays(**overrides):
    features, field, depths, _ = make_rays((2, 3), 5, 4, torch.float32, "cpu")
    args = dict(features=features, field=field, depths=depths, beta=0.1)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,error,pattern", [
    (dict(field=torch.rand(2, 3, 6, 1)), ValueError, r"field must be \[2, 3, 5, 1\] or \[2, 3, 5\].*got \[2, 3, 6, 1\]"),
    (dict(depths=torch.rand(2, 5, 1)), ValueError, r"depths must be \[2, 3, 5, 1\] or \[2, 3, 5\].*got \[2, 5, 1\]"),
    (dict(features=torch.rand(4)), ValueError, r"features must be a tensor \[..., S, C\], got \[4\]"),
    (dict(beta=0.0), ValueError, r"beta must be positive, got 0.0"),
    (dict(beta=-1.0), ValueError, r"beta must be positive, got -1.0"),
    (dict(beta=torch.tensor([-0.5])), RuntimeError, r"beta must be positive, got -0.5"),
    (dict(beta=None), ValueError, r"beta must be given for field_type='sdf'"),
    (dict(features=torch.randint(0, 3, (2, 3, 5, 4))), RuntimeError, r"features must be float32, float64, float16 or bfloat16, got Long"),
    (dict(field=torch.rand(2, 3, 5, 1, dtype=torch.float64)), RuntimeError, r"field must be Float \(from features\), got Double"),
    (dict(depths=torch.rand(2, 3, 5, 1, dtype=torch.float64)), RuntimeError, r"depths must be of the dtype of field \(Float\), got Double"),
    (dict(depths=torch.rand(2, 3, 5, 1, device="meta")), ValueError, r"depths must be on the device of features \(cpu\), got meta"),
    (dict(features=torch.rand(2, 3, 1, 4), field=torch.rand(2, 3, 1, 1), depths=torch.rand(2, 3, 1, 1)), ValueError, r"at least 2 samples per ray"),
    (dict(field_type="occupancy"), ValueError, r"field_type must be one of \('sdf', 'sdf_laplace', 'density'\)"),
    (dict(mode="emission"), ValueError, r"mode must be one of \('midpoint', 'absorption'\)"),
    (dict(beta="0.1"), TypeError, r"beta must be a positive number or a one-element tensor, got str '0.1'"),
    (dict(beta=True), TypeError, r"beta must be a positive number or a one-element tensor, got bool True"),
])
def test_bad_input(overrides, error, pattern):
    args = rays(**overrides)
    kwargs = {k: args.pop(k) for k in list(args) if k not in ("features", "field", "depths")}
    with pytest.raises(error, match=pattern):
        omnifast.composite(args["features"], args["field"], args["depths"], **kwargs)


# ---------------------------------------------------------------------------------------------
# CUDA

@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu_twin(device, mode):
    inputs = make_rays((4, 300), 40, 33, torch.float64, "cpu")
    results = []
    for target, context in twin_and_kernels(device):
        with context():
            leaves = [t.to(target).requires_grad_() for t in inputs]
            beta = torch.tensor([0.01], dtype=torch.float64, device=target, requires_grad=True)
            out = omnifast.composite(*leaves[:3], beta=beta, density_delta=leaves[3], mode=mode,
                                     return_weights=True)
            grads = torch.autograd.grad(sum(t.square().sum() for t in out), (*leaves, beta))
        results.append([t.detach().cpu() for t in (*out, *grads)])
    for cpu, cuda in zip(*results):
        assert_close(cuda, cpu, 1e-10)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_16bit_features(device, dtype):
    features, field, depths, _ = make_rays((8, 64), 48, 32, torch.float32, device)
    half = features.to(dtype).requires_grad_()
    out = omnifast.composite(half, field, depths, beta=0.02)
    ref = reference.composite(half.detach().float(), field, depths, beta=0.02)
    assert out.features.dtype == dtype
    assert_close(out.features.float(), ref.features, 1e-2)
    (grad,) = torch.autograd.grad(out.features.float().sum(), half)
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_non_positive_beta_on_the_kernels_is_a_catchable_error(device):
    features, field, depths, _ = make_rays((2, 16), 8, 4, torch.float32, device)
    for beta in (0.0, -0.5):
        with pytest.raises(RuntimeError, match="beta must be positive"):
            omnifast.composite(features, field, depths, beta=torch.tensor([beta], device=device))
    out = omnifast.composite(features, field, depths, beta=0.02)  # the device still works
    assert torch.isfinite(out.features).all()


# ---------------------------------------------------------------------------------------------
# Importance sampling and merging

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_importance_sample_matches_eg3d_given_the_same_draws(device, dtype, mode, deterministic):
    features, field, depths, _ = make_rays((3, 40), 24, 4, dtype, device)
    weights = omnifast.composite(features, field, depths, beta=0.02, mode=mode,
                                 return_weights=True).weights
    weights[0, :5] = 0.0  # empty rays: the +0.01 keeps the pdf defined
    seed = 11
    ours = omnifast.importance_sample(depths, weights, 16, deterministic=deterministic,
                                      generator=torch.Generator(device).manual_seed(seed))
    rays = 3 * 40
    u = (torch.linspace(0, 1, 16, dtype=dtype, device=device).expand(rays, 16) if deterministic
         else torch.rand((rays, 16), device=device,
                         generator=torch.Generator(device).manual_seed(seed)).to(dtype))
    ref = reference.sample_importance(depths.reshape(rays, -1), weights.reshape(rays, -1), 16, u)
    assert ours.shape == (3, 40, 16, 1)
    assert (ours.diff(dim=-2) >= 0).all()
    assert_close(ours.reshape(rays, 16), torch.sort(ref, dim=-1).values, TOL[dtype])
    mids = 0.5 * (depths[..., :-1, :] + depths[..., 1:, :])
    assert (ours >= mids[..., :1, :]).all() and (ours <= mids[..., -1:, :]).all()


def test_stratified_draws_take_one_quantile_per_stratum():
    from omnifast.ops.composite import importance_uniforms

    u = importance_uniforms(500, 8, stratified=True, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert ((u * 8).floor() == torch.arange(8, dtype=torch.float64)).all()  # draw k in [k / 8, (k + 1) / 8)
    assert u.std(0).min() > 0.03  # and random within it
    depths = torch.linspace(2, 3, 25, dtype=torch.float64).expand(500, 25)
    weights = torch.rand(500, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = omnifast.importance_sample(depths, weights, 8, stratified=True, generator=torch.Generator().manual_seed(2))
    assert_close(ours, reference.sample_importance(depths, weights, 8, u), TOL[torch.float64])


def test_importance_sample_layouts_and_errors():
    depths = torch.sort(torch.rand(5, 10), -1).values
    out = omnifast.importance_sample(depths, torch.rand(5, 9), 4)
    assert out.shape == (5, 4)
    with pytest.raises(RuntimeError, match=r"weights must be \[rays, S - 1\] or \[rays, S\].*got \[5, 7\]"):
        omnifast.importance_sample(depths, torch.rand(5, 7), 4)
    with pytest.raises(ValueError, match="weights must be"):
        omnifast.importance_sample(depths, torch.rand(4, 9), 4)
    with pytest.raises(RuntimeError, match=r"depths must be float32 or float64, got Long"):
        omnifast.importance_sample(depths.long(), torch.rand(5, 9).long(), 4)
    for n in (0, -2, 2.5, "4", True):
        with pytest.raises(ValueError, match=f"n must be a positive integer, got {n!r}"):
            omnifast.importance_sample(depths, torch.rand(5, 9), n)
    assert omnifast.importance_sample(torch.zeros(0, 10, 1), torch.zeros(0, 9, 1), 4).shape == (0, 4, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_zero_rays_give_empty_outputs(device, mode):
    """No rays (an empty batch, a fully masked image) is not an error: every output is empty."""
    features, field, depths = (torch.zeros(0, 3, 8, c, device=device) for c in (4, 1, 1))
    out = omnifast.composite(features, field, depths, beta=0.1, mode=mode, return_weights=True)
    intervals = 7 if mode == "midpoint" else 8
    assert [tuple(t.shape) for t in out] == [(0, 3, 4), (0, 3, 1), (0, 3, 1), (0, 3, intervals, 1)]
    depths_out, (values,) = omnifast.merge_samples(torch.zeros(0, 5, 1, device=device),
                                                   torch.zeros(0, 3, 1, device=device),
                                                   (torch.zeros(0, 5, 2, device=device),),
                                                   (torch.zeros(0, 3, 2, device=device),))
    assert depths_out.shape == (0, 8, 1) and values.shape == (0, 8, 2)


def test_merge_samples_checks_the_values_follow_the_depths():
    coarse, fine = torch.sort(torch.rand(2, 4, 1), 1).values, torch.sort(torch.rand(2, 3, 1), 1).values
    with pytest.raises(ValueError, match=r"values 0 must be \[..., S, K\] and \[..., n, K\] along depths "
                                         r"\[2, 4\] and \[2, 3\], got \[2, 4, 2\] and \[2, 5, 2\]"):
        omnifast.merge_samples(coarse, fine, (torch.zeros(2, 4, 2),), (torch.zeros(2, 5, 2),))
    with pytest.raises(ValueError, match=r"got \[2, 4, 2\] and \[2, 3, 3\]"):
        omnifast.merge_samples(coarse, fine, (torch.zeros(2, 4, 2),), (torch.zeros(2, 3, 3),))


@pytest.mark.parametrize("device", DEVICES)
def test_merge_samples_matches_a_stable_sort(device):
    coarse = torch.sort(torch.rand(4, 30, 12, 1, device=device), -2).values
    fine = torch.sort(torch.rand(4, 30, 7, 1, device=device), -2).values
    fine[:, :, 2] = coarse[:, :, 5]  # ties: coarse first
    fine = torch.sort(fine, -2).values
    colors = [torch.randn(4, 30, 12, 8, device=device, requires_grad=True),
              torch.randn(4, 30, 7, 8, device=device, requires_grad=True)]
    depths, (merged,) = omnifast.merge_samples(coarse, fine, (colors[0],), (colors[1],))
    ref_depths, (ref_merged,) = reference.merge_samples(coarse, fine, (colors[0],), (colors[1],))
    assert torch.equal(depths, ref_depths) and torch.equal(merged, ref_merged)
    grad = torch.randn_like(merged)
    for g, r in zip(torch.autograd.grad(merged, colors, grad),
                    torch.autograd.grad(ref_merged, colors, grad)):
        assert torch.equal(g, r)


def test_sampling_opcheck():
    depths = torch.sort(torch.rand(6, 10, dtype=torch.float64), -1).values
    u = torch.sort(torch.rand(6, 5, dtype=torch.float64), -1).values
    torch.library.opcheck(torch.ops.omnifast.importance_sample,
                          (depths, torch.rand(6, 9, dtype=torch.float64), u))
    torch.library.opcheck(torch.ops.omnifast.merge_order, (depths, u))


# ---------------------------------------------------------------------------------------------
# Drop-ins

import types  # noqa: E402

import omnifast.eg3d  # noqa: E402

import eg3d_local  # noqa: E402


def marcher_inputs(device="cpu"):
    colors = torch.rand(2, 50, 20, 32, device=device, requires_grad=True)
    densities = (torch.randn(2, 50, 20, 1, device=device) * 3).requires_grad_()
    depths = torch.sort(torch.rand(2, 50, 20, 1, device=device) + 2.25, -2).values
    return colors, densities, depths


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("white_back", [False, True])
def test_eg3d_ray_marcher_drop_in(device, white_back):
    colors, densities, depths = marcher_inputs(device)
    options = {"clamp_mode": "softplus", "white_back": white_back}
    ours = omnifast.eg3d.MipRayMarcher2()(colors, densities, depths, options)
    theirs = eg3d_local.MipRayMarcher2()(colors, densities, depths, options)
    upstream = [torch.randn_like(t) for t in theirs]
    grads = [torch.autograd.grad(sum((t * g).sum() for t, g in zip(out, upstream)),
                                 (colors, densities)) for out in (ours, theirs)]
    for a, b in zip((*ours, *grads[0]), (*theirs, *grads[1])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"absorption": True}, {"force_background": True},
                                     {"absorption": True, "white_back": True}])
def test_omniavatar_ray_marcher_drop_in(options):
    colors, densities, depths = marcher_inputs()
    options = {"clamp_mode": "softplus", **options}
    rgb, depth, weights = omnifast.eg3d.OmniAvatarMipRayMarcher2()(colors, densities, depths, options)
    mode = "absorption" if options.get("absorption") else "midpoint"
    ref, ref_depth, _, ref_weights = reference.rendering.march(
        colors, densities, depths, mode=mode, white_back=options.get("white_back", False),
        force_background=options.get("force_background", False))
    if mode == "absorption":  # OmniAvatar rescales on this path only
        ref = ref * 2 - 1
    for a, b in ((rgb, ref), (depth, ref_depth), (weights, ref_weights)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_patch_swaps_marcher_and_sampling_into_existing_renderers():
    module = types.ModuleType("renderer")
    module.MipRayMarcher2 = type("MipRayMarcher2", (eg3d_local.MipRayMarcher2,), {})
    module.ImportanceRenderer = type("ImportanceRenderer", (eg3d_local.ImportanceRenderer,), {})
    marcher, renderer = module.MipRayMarcher2(), module.ImportanceRenderer()  # built before
    colors, densities, depths = marcher_inputs()
    options = {"clamp_mode": "softplus"}
    before = marcher(colors, densities, depths, options)
    torch.manual_seed(3)
    fine_before = renderer.sample_importance(depths, before[2], 12)
    replaced = omnifast.eg3d.patch(module)
    assert replaced == ["MipRayMarcher2.run_forward", "ImportanceRenderer.sample_importance",
                        "ImportanceRenderer.unify_samples"]
    after = marcher(colors, densities, depths, options)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.manual_seed(3)  # the same draws: EG3D's torch.rand((rays, n))
    fine_after = renderer.sample_importance(depths, before[2], 12)
    torch.testing.assert_close(fine_after, torch.sort(fine_before, -2).values, rtol=1e-5,
                               atol=1e-5)
    merged = renderer.unify_samples(depths, colors, densities, fine_after,
                                    colors[:, :, :12], densities[:, :, :12])
    ref = eg3d_local.ImportanceRenderer().unify_samples(depths, colors, densities, fine_after,
                                                        colors[:, :, :12], densities[:, :, :12])
    for a, b in zip(merged, ref):
        assert torch.equal(a, b)


class NerfaccDenseScan:
    """nerfacc's packed entry points with its CUDA scan (built by nerfacc on first use) replaced
    by its dense one per ray, so that the benchmark's flattening and unflattening for the packed
    peer is checked on any machine, quickly."""

    def __init__(self, nerfacc):
        self.nerfacc = nerfacc
        self.accumulate_along_rays = nerfacc.accumulate_along_rays  # index_add_: any device

    def render_weight_from_density(self, t0, t1, sigma, packed_info):
        rays, per_ray = packed_info.shape[0], int(packed_info[0, 1])
        assert torch.equal(packed_info[:, 0], torch.arange(rays, device=t0.device) * per_ray)
        assert torch.all(packed_info[:, 1] == per_ray)
        dense = self.nerfacc.render_weight_from_density(
            *(x.view(rays, per_ray) for x in (t0, t1, sigma)))
        return tuple(x.reshape(-1) for x in dense)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [False, True])
def test_nerfacc_benchmark_peer_renders_the_same_chain(device, packed):
    """The peer `omnifast bench composite` times beside omnifast computes what omnifast does: its
    transmittance (exp of a sum) differs from EG3D's (a product with +1e-10) by about 1e-10 per
    interval."""
    nerfacc = pytest.importorskip("nerfacc", reason="nerfacc, the benchmark's peer, is not installed")
    from omnifast.bench.composite import nerfacc_render

    if packed:
        nerfacc = NerfaccDenseScan(nerfacc)
    features, sdf, depths, delta = make_rays((2, 9), 24, 5, torch.float64, device)
    beta = torch.tensor([0.02], dtype=torch.float64, device=device)
    peer = nerfacc_render(nerfacc, packed=packed)(features, sdf, depths, beta, delta)
    ours = omnifast.composite(features, sdf, depths, beta=beta, density_delta=delta)
    assert peer[1].shape == ours.depth.shape
    for a, b in zip(peer, (ours.features, ours.depth, ours.opacity)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
