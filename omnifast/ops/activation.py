"""Activations in one pass. ``softplus``: PyTorch's, vectorised on the CPU, where
``torch.nn.functional.softplus`` costs several exponentials per element (the semantic SDF's MLP,
OmniAvatar's IGR network with softplus of beta 100 after every layer, spends much of its time in
it). ``bias_act``: EG3D's fused bias, leaky ReLU, gain and clamp, whose plain-PyTorch form takes
four passes forward and eight backward over every full-resolution activation."""
import math
from numbers import Real

import torch

from .. import _C_loader  # noqa: F401  (loads the operator library)


def softplus(x, beta=1.0, threshold=20.0):
    """``log(1 + exp(beta x)) / beta``, and ``x`` where ``beta x > threshold``: the values of
    ``torch.nn.functional.softplus(x, beta, threshold)`` to rounding, except that where the result
    (or, in float32 on the CPU, ``exp(beta x)``) is below the smallest normal number it is 0.
    Differentiable (twice, through PyTorch's ``softplus_backward``).

    Args:
        x: float32 or float64 tensor of any shape, on the CPU or a CUDA device.
        beta: a finite number above 0. threshold: a number.
    Returns:
        A contiguous tensor of x's shape and dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"omnifast.softplus: x must be a tensor, got {type(x).__name__}")
    if isinstance(beta, bool) or not isinstance(beta, Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"omnifast.softplus: beta must be a finite number above 0, got {beta!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or math.isnan(threshold):
        raise ValueError(f"omnifast.softplus: threshold must be a number, got {threshold!r}")
    return torch.ops.omnifast.softplus(x, float(beta), float(threshold))


@torch.library.register_fake("omnifast::softplus")
def _softplus_fake(x, beta, threshold):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    x, beta, threshold = inputs
    ctx.save_for_backward(x)
    ctx.config = (beta, threshold)


def _backward(ctx, grad):
    x, = ctx.saved_tensors
    return torch.ops.aten.softplus_backward(grad, x, *ctx.config), None, None


torch.library.register_autograd("omnifast::softplus", _backward, setup_context=_setup)


ACTIVATIONS = {"linear": (1.0, None), "lrelu": (math.sqrt(2), 0.2)}  # default gain, default alpha


def bias_act(x, b=None, act="linear", alpha=None, gain=None, clamp=None):
    """EG3D's ``bias_act`` (``torch_utils.ops.bias_act``, channels on dim 1) for its ``linear``
    and ``lrelu`` activations, in one pass: ``clamp(act(x + b) * gain, -clamp, clamp)``, with
    EG3D's defaults (``alpha`` 0.2 and ``gain`` sqrt 2 for ``lrelu``; ``gain`` 1 for ``linear``).
    The backward keeps only the output and is one pass too; it is differentiable again (R1).

    Args:
        x: float32 or float64 ``[N, C, *]``, on the CPU or a CUDA device. b: ``[C]`` or None.
        act: ``"linear"`` or ``"lrelu"``. alpha: the leaky ReLU's negative slope (0 or above).
        gain: a positive multiplier. clamp: None or a number, 0 or above.
    Returns:
        A contiguous tensor of x's shape and dtype.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"omnifast.bias_act: act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
    default_gain, default_alpha = ACTIVATIONS[act]
    gain = default_gain if gain is None else gain
    alpha = default_alpha if alpha is None or act == "linear" else alpha
    for name, value, low in (("gain", gain, "above 0"), ("alpha", alpha, "0 or above"), ("clamp", clamp, "0 or above")):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or \
                (value <= 0 if low == "above 0" else value < 0):
            raise ValueError(f"omnifast.bias_act: {name} must be a finite number {low}, got {value!r}")
    if not isinstance(x, torch.Tensor) or (b is not None and not isinstance(b, torch.Tensor)):
        raise TypeError(f"omnifast.bias_act: x and b must be tensors, got {type(x).__name__} and "
                        f"{type(b).__name__}")
    negative = gain * (alpha if act == "lrelu" else 1.0)
    return torch.ops.omnifast.bias_act(x, b, float(gain), float(negative), None if clamp is None else float(clamp))


@torch.library.register_fake("omnifast::bias_act")
def _bias_act_fake(x, bias, positive, negative, clamp):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("omnifast::bias_act_grad")
def _bias_act_grad_fake(grad, y, positive, negative, clamp):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _setup_bias_act(ctx, inputs, output):
    _, bias, *config = inputs
    ctx.save_for_backward(output)
    ctx.config = config
    ctx.bias_dims = None if bias is None else (0, *range(2, output.dim()))


def _bias_act_backward(ctx, grad):
    y, = ctx.saved_tensors
    grad_x = torch.ops.omnifast.bias_act_grad(grad, y, *ctx.config)
    grad_bias = grad_x.sum(ctx.bias_dims) if ctx.bias_dims is not None and ctx.needs_input_grad[1] else None
    return grad_x, grad_bias, None, None, None


def _setup_bias_act_grad(ctx, inputs, output):
    _, y, *config = inputs
    ctx.save_for_backward(y)
    ctx.config = config


def _bias_act_grad_backward(ctx, grad_grad):
    y, = ctx.saved_tensors  # the gradient is linear in grad and piecewise constant in y
    return torch.ops.omnifast.bias_act_grad(grad_grad, y, *ctx.config), None, None, None, None


torch.library.register_autograd("omnifast::bias_act", _bias_act_backward, setup_context=_setup_bias_act)
torch.library.register_autograd("omnifast::bias_act_grad", _bias_act_grad_backward,
                                setup_context=_setup_bias_act_grad)
