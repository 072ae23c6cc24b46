"""omnifast.softplus against torch.nn.functional.softplus (values over every range of beta x the
vectorised CPU math and the CUDA kernel take, gradients, registration, bad input, the semantic SDF
warp that runs its MLP on it) and omnifast.bias_act against EG3D's plain-PyTorch bias_act (values,
gradients and second derivatives, registration, bad input, the GAN networks on it)."""
import math

import pytest
import torch
import torch.nn.functional as F

import omnifast

from conftest import DEVICES, KERNEL_DEVICES, poisoned_outputs, simt_active, twin_and_kernels

SMALLEST_NORMAL = {torch.float32: torch.finfo(torch.float32).tiny, torch.float64: torch.finfo(torch.float64).tiny}


def inputs(dtype, device, beta, n=20000):
    """beta x spread over every branch: far below the flush point, the exp tail, around 0, around
    the threshold and beyond it; plus the special values."""
    z = torch.cat([torch.randn(n // 4, dtype=torch.float64) * s for s in (1, 10, 100, 1000)])
    z = torch.cat([z, torch.tensor([0.0, -0.0, 20.0, 19.999, 20.001, -20.0, 87.0, -87.0, -745.0, 710.0],
                                   dtype=torch.float64)])
    x = (z / beta).to(dtype)
    special = torch.tensor([math.inf, -math.inf, math.nan], dtype=dtype)
    return torch.cat([x, special]).to(device)


def expected(x, beta, threshold):
    """PyTorch's softplus evaluated in float64 on the same (rounded) inputs, with beta x rounded as
    the input's dtype rounds it (both implementations form that product first); log(1 + e^z) as
    logaddexp, which does not overflow where PyTorch's does (a threshold above 709)."""
    z = (x * beta).double()
    ref = torch.logaddexp(z, torch.zeros_like(z)) / beta
    return torch.where(z > threshold, x.double(), ref)


def assert_matches(got, x, beta, threshold):
    ref = expected(x, beta, threshold)
    got = got.double()
    assert got.shape == ref.shape and got.dtype == torch.float64
    nan = ref.isnan()
    assert torch.equal(got.isnan(), nan)
    infinite = ref.isinf()
    assert torch.equal(got[infinite], ref[infinite])
    finite = ~nan & ~infinite
    got, ref, z = got[finite], ref[finite], (x * beta).double()[finite]
    eps = torch.finfo(x.dtype).eps
    tiny = SMALLEST_NORMAL[x.dtype]
    # where exp(beta x) or the result is below the smallest normal number: 0, or the value
    may_flush = (ref.abs() < tiny) | (z < math.log(tiny))
    bound = 4 * eps * (1 + z[may_flush].abs()) * ref[may_flush].abs() + tiny
    assert ((got[may_flush] == 0) | ((got[may_flush] - ref[may_flush]).abs() <= bound)).all()
    kept = ~may_flush
    # a few roundings of the result, plus exp's sensitivity to the rounding of beta x
    bound = 4 * eps * (1 + z[kept].abs().clamp_max(1e4)) * ref[kept].abs()
    error = (got[kept] - ref[kept]).abs()
    assert (error <= bound).all(), f"worst {(error / bound.clamp_min(1e-300)).max().item():.2f} x the bound"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta, threshold", [(100.0, 20.0), (1.0, 20.0), (0.5, 5.0), (3.0, 1e30)])
def test_matches_torch(device, dtype, beta, threshold):
    x = inputs(dtype, device, beta, n=2000 if simt_active() else 20000)  # SIMT: thread by thread
    assert_matches(omnifast.softplus(x, beta, threshold), x, beta, threshold)


def test_matches_torch_on_a_network_layer():
    """The values the semantic SDF's MLP sees (beta 100): torch's own float32 result, to a few
    roundings of the result."""
    x = torch.randn(64, 128) @ (torch.randn(128, 128) / 128 ** 0.5)
    got, ref = omnifast.softplus(x, 100.0), F.softplus(x, beta=100.0)
    tiny = SMALLEST_NORMAL[torch.float32]
    close = (got - ref).abs() <= 4 * torch.finfo(torch.float32).eps * (1 + (100 * x).abs()) * ref.abs() + tiny
    assert close.all()


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_layouts_and_every_element_written(device):
    for shape in ((), (0,), (7,), (3, 0, 2), (5, 1031, 3)):
        x = torch.randn(shape, device=device)
        with poisoned_outputs():
            out = omnifast.softplus(x, 2.0)
        assert out.shape == x.shape and not out.isnan().any()
        assert torch.equal(out, omnifast.softplus(x.clone(), 2.0))
    x = torch.randn(6, 9, dtype=torch.float64, device=device).t()  # not contiguous
    out = omnifast.softplus(x, 3.0)
    assert out.is_contiguous() and torch.equal(out, omnifast.softplus(x.contiguous(), 3.0))


@pytest.mark.parametrize("beta, threshold", [(100.0, 20.0), (0.7, 3.0)])
def test_gradcheck(beta, threshold):
    x = (torch.randn(40, dtype=torch.float64) * 2 / beta).requires_grad_()
    x = x.detach().where((x * beta - threshold).abs() > 1e-3, torch.full_like(x, -1.0 / beta)).requires_grad_()
    fn = lambda t: omnifast.softplus(t, beta, threshold)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    grad, = torch.autograd.grad(fn(x).sum(), x)
    ref, = torch.autograd.grad(F.softplus(x, beta, threshold).sum(), x)
    assert torch.equal(grad, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for requires_grad in (False, True):
        x = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.omnifast.softplus, (x, 100.0, 20.0))


def test_torch_compile_fullgraph():
    x = torch.randn(4, 33, requires_grad=True)

    def layer(t):
        return omnifast.softplus(t * 2, 100.0).square().mean()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    grad, = torch.autograd.grad(loss, x)
    ref_loss = layer(x)
    ref_grad, = torch.autograd.grad(ref_loss, x)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: omnifast.softplus([1.0]), TypeError, r"x must be a tensor, got list"),
    (lambda: omnifast.softplus(torch.ones(3, dtype=torch.int64)), RuntimeError, r"x must be float32 or float64, got Long"),
    (lambda: omnifast.softplus(torch.ones(3, dtype=torch.float16)), RuntimeError, r"x must be float32 or float64, got Half"),
    (lambda: omnifast.softplus(torch.ones(3), 0.0), ValueError, r"beta must be a finite number above 0, got 0.0"),
    (lambda: omnifast.softplus(torch.ones(3), -1), ValueError, r"beta must be a finite number above 0, got -1"),
    (lambda: omnifast.softplus(torch.ones(3), math.inf), ValueError, r"beta must be a finite number above 0, got inf"),
    (lambda: omnifast.softplus(torch.ones(3), True), ValueError, r"beta must be a finite number above 0, got True"),
    (lambda: omnifast.softplus(torch.ones(3), 1.0, math.nan), ValueError, r"threshold must be a number, got nan"),
    (lambda: torch.ops.omnifast.softplus(torch.ones(3), -2.0, 20.0), RuntimeError, r"omnifast.softplus: beta must be a finite number above 0, got -2"),
])
def test_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu_twin(device, dtype):
    x = inputs(dtype, "cpu", 100.0, n=4000)
    results = []
    for target, context in twin_and_kernels(device):
        with context():
            results.append(omnifast.softplus(x.to(target), 100.0).cpu())
    cpu, cuda = results
    rel = 1e-15 if dtype == torch.float64 else 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(cuda, cpu, rtol=rel, atol=SMALLEST_NORMAL[dtype], equal_nan=True)


def test_semantic_sdf_warp_with_the_fast_softplus(flame_dir):
    """The warp's MLP on omnifast's softplus (the omnifast backend) gives the reference
    backend's distances and correspondences, with and without gradients, and its CPU chunking
    leaves the answer unchanged."""
    from omnifast.flame import Flame
    from omnifast.render.warp import SDFWarp
    from omnifast.sdf.network import SemanticSDF

    flame = Flame(flame_dir, n_shape=10, n_expr=10)
    sdf = SemanticSDF(flame.layout.size, torch.full((3,), -0.15), torch.full((3,), 0.15))
    with torch.no_grad():
        for layer in sdf.layers:  # away from the geometric initialisation's symmetries
            layer.weight.add_(torch.randn_like(layer.weight) * 0.05)
    warp = SDFWarp(flame, sdf, world_scale=2.0)
    points = (torch.rand(2, 3000, 3) - 0.5) * 0.8
    params = torch.randn(2, flame.layout.size) * 0.1
    ref = warp(points, params, "reference")
    ours = warp(points, params, "omnifast")
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    warp.chunk = 1 << 20
    for a, b in zip(warp(points, params, "omnifast"), ours):
        assert torch.equal(a, b)
    points.requires_grad_()
    grads = [torch.autograd.grad(warp(points, params, backend, differentiable=True)[0].sum(), points)[0]
             for backend in ("omnifast", "reference")]
    assert torch.allclose(*grads, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# bias_act

def bias_act_reference(x, b=None, act="linear", alpha=None, gain=None, clamp=None):
    """EG3D's ``_bias_act_ref`` for linear and lrelu: add the bias, activation, gain, clamp."""
    alpha = 0.2 if alpha is None else alpha
    gain = (math.sqrt(2) if act == "lrelu" else 1.0) if gain is None else gain
    if b is not None:
        x = x + b.reshape(1, -1, *([1] * (x.dim() - 2)))
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    x = x * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


BIAS_ACT_CASES = [dict(act="lrelu"), dict(act="lrelu", clamp=256.0), dict(act="lrelu", gain=0.7, clamp=3.0),
                  dict(act="linear", clamp=2.0), dict(act="linear", gain=2.5), dict(act="lrelu", alpha=0.0)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kwargs", BIAS_ACT_CASES, ids=lambda k: "-".join(f"{a}={v}" for a, v in k.items()))
@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 6, 7), (2, 3, 2, 3, 4)])
def test_bias_act_matches_eg3d(device, dtype, kwargs, shape):
    x = (torch.randn(shape, dtype=dtype) * 3).to(device).requires_grad_()
    b = torch.randn(shape[1], dtype=dtype, device=device).requires_grad_()
    for bias in (b, None):
        ours = omnifast.bias_act(x, bias, **kwargs)
        ref = bias_act_reference(x, bias, **kwargs)
        rel = 1e-14 if dtype == torch.float64 else 4e-7
        torch.testing.assert_close(ours, ref, rtol=rel, atol=rel)
        upstream = torch.randn_like(ref)
        wrt = (x, b) if bias is not None else (x,)
        grads = torch.autograd.grad(ours, wrt, upstream)
        ref_grads = torch.autograd.grad(ref, wrt, upstream)
        for a, r in zip(grads, ref_grads):
            torch.testing.assert_close(a, r, rtol=rel * 10, atol=rel * 10)


@pytest.mark.parametrize("kwargs", BIAS_ACT_CASES[:4], ids=lambda k: "-".join(f"{a}={v}" for a, v in k.items()))
def test_bias_act_gradcheck(kwargs):
    # away from the kink at 0 and from the clamp, where the derivative jumps
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    x = torch.where(x.abs() < 0.05, torch.full_like(x, 0.3), x).requires_grad_()
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    fn = lambda t, c: omnifast.bias_act(t, c, **kwargs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("device", DEVICES)
def test_bias_act_opcheck_and_every_element_written(device):
    x = torch.randn(2, 3, 5, dtype=torch.float64, device=device)
    b = torch.randn(3, dtype=torch.float64, device=device)
    for requires_grad in (False, True):
        args = [t.clone().requires_grad_(requires_grad) for t in (x, b)]
        torch.library.opcheck(torch.ops.omnifast.bias_act, (*args, 1.4, 0.28, 2.0))
        torch.library.opcheck(torch.ops.omnifast.bias_act, (args[0], None, 1.4, 0.28, None))
    y = torch.ops.omnifast.bias_act(x, b, 1.4, 0.28, 2.0)
    torch.library.opcheck(torch.ops.omnifast.bias_act_grad, (torch.randn_like(y), y, 1.4, 0.28, 2.0))
    with poisoned_outputs():
        x = torch.randn(3, 4, 1031, device=device, requires_grad=True)
        y = omnifast.bias_act(x, torch.randn(4, device=device), act="lrelu", clamp=1.0)
        grad, = torch.autograd.grad(y.sum(), x)
    assert not y.isnan().any() and not grad.isnan().any()


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: omnifast.bias_act(torch.ones(2, 3), act="relu"), ValueError, r"act must be one of \('linear', 'lrelu'\), got 'relu'"),
    (lambda: omnifast.bias_act(torch.ones(2, 3), gain=0), ValueError, r"gain must be a finite number above 0, got 0"),
    (lambda: omnifast.bias_act(torch.ones(2, 3), act="lrelu", alpha=-0.1), ValueError, r"alpha must be a finite number 0 or above, got -0.1"),
    (lambda: omnifast.bias_act(torch.ones(2, 3), clamp=-1.0), ValueError, r"clamp must be a finite number 0 or above, got -1.0"),
    (lambda: omnifast.bias_act(torch.ones(2, 3), clamp=True), ValueError, r"clamp must be a finite number 0 or above, got True"),
    (lambda: omnifast.bias_act([1.0]), TypeError, r"x and b must be tensors, got list and NoneType"),
    (lambda: omnifast.bias_act(torch.ones(3)), RuntimeError, r"omnifast.bias_act: x must be \[N, C, \*\] \(2 dims or more\), got \[3\]"),
    (lambda: omnifast.bias_act(torch.ones(2, 3, dtype=torch.int32)), RuntimeError, r"x must be float32 or float64, got Int"),
    (lambda: omnifast.bias_act(torch.ones(2, 3), torch.ones(4)), RuntimeError, r"bias must be of shape \[3\], got \[4\]"),
    (lambda: omnifast.bias_act(torch.ones(2, 3), torch.ones(3, dtype=torch.float64)), RuntimeError, r"bias must be of the dtype of x \(Float\), got Double"),
    (lambda: torch.ops.omnifast.bias_act_grad(torch.ones(2, 4), torch.ones(2, 3), 1.0, 1.0, None), RuntimeError, r"grad must be of shape \[2, 3\], got \[2, 4\]"),
])
def test_bias_act_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_bias_act_cuda_matches_cpu_twin(device):
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64) * 4
    b, upstream = torch.randn(6, dtype=torch.float64), torch.randn(3, 6, 9, 11, dtype=torch.float64)
    results = []
    for target, context in twin_and_kernels(device):
        with context():
            leaf = x.to(target).requires_grad_()
            y = omnifast.bias_act(leaf, b.to(target), act="lrelu", clamp=5.0)
            grad, = torch.autograd.grad(y, leaf, upstream.to(target))
        results.append((y.detach().cpu(), grad.cpu()))
    for cpu, cuda in zip(*results):
        torch.testing.assert_close(cuda, cpu, rtol=1e-15, atol=0)


def test_networks_with_and_without_the_fused_activations():
    """A discriminator's logits, its R1 penalty (a double backward through every activation) and
    the parameter gradients are the same with omnifast's bias_act and with the plain PyTorch one."""
    from omnifast.gan.loss import r1_penalty
    from omnifast.gan.models import DualDiscriminator
    from omnifast.gan.networks import fused_activations

    D = DualDiscriminator(32, 25, 4, channel_base=256, channel_max=32).double()
    image = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    raw = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    labels = torch.randn(2, 25, dtype=torch.float64)
    results = []
    for fused in (True, False):
        with fused_activations(fused):
            logits = D(image, raw, labels)[0]
            r1 = r1_penalty(D, image, raw, labels, 0.0).sum()
            grads = torch.autograd.grad(logits.sum() + r1, list(D.parameters()), allow_unused=True)
        results.append((logits, r1, *(g for g in grads if g is not None)))
    assert len(results[0]) == len(results[1]) > 10
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
