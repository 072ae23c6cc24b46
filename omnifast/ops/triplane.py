"""Tri-plane (and tri-grid) feature sampling, EG3D and OmniAvatar conventions."""
import math
from numbers import Real

import torch

from .. import _C_loader

# Coordinate components feeding each plane's grid axes (W first, then H, then D).
AXES = {
    # EG3D's released projection: (x, y), (x, z), (z, x). Planes 1 and 2 are both the XZ plane;
    # every released EG3D checkpoint was trained with it.
    "eg3d": ((0, 1), (0, 2), (2, 0)),
    # The corrected projection of EG3D's fixed_triplanes branch: (x, y), (y, z), (z, x).
    "fixed": ((0, 1), (1, 2), (2, 0)),
    # OmniAvatar's tri-grid volumes: (W, H, D) read xyz, yzx, xzy.
    "omniavatar": ((0, 1, 2), (1, 2, 0), (0, 2, 1)),
}
REDUCE = _C_loader.choices(_C_loader.C.TriplaneReduce)


def plane_dims(planes, op="triplane_sample"):
    """2 for [N, 3, C, H, W] planes, 3 for [N, 3, C, D, H, W] volumes."""
    if not isinstance(planes, torch.Tensor):
        raise TypeError(f"omnifast.{op}: planes must be a torch.Tensor, got {type(planes).__name__}")
    if planes.dim() not in (5, 6) or planes.shape[1] != 3:
        raise ValueError(
            f"omnifast.{op}: planes must be [N, 3, C, H, W] or [N, 3, C, D, H, W], "
            f"got {list(planes.shape)}"
        )
    return planes.dim() - 3


FLOAT_TYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF_TYPES = (torch.float16, torch.bfloat16)


def check_tensors(planes, coords, op="triplane_sample"):
    """Checks of the public entry, before any conversion (the C++ op checks the same again)."""
    dims = plane_dims(planes, op)
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"omnifast.{op}: coords must be a torch.Tensor, got {type(coords).__name__}")
    if planes.dtype not in FLOAT_TYPES:
        raise TypeError(f"omnifast.{op}: planes must be float32, float64, float16 or bfloat16, "
                        f"got {planes.dtype}")
    if planes.dtype in HALF_TYPES and not _C_loader.runs_cuda_kernels(planes):
        raise TypeError(f"omnifast.{op}: planes must be float32 or float64 on the CPU (16-bit "
                        f"planes are CUDA-only), got {planes.dtype}")
    if coords.device != planes.device:
        raise ValueError(f"omnifast.{op}: coords must be on the device of planes "
                         f"({planes.device}), got {coords.device}")
    if coords.dim() != 3 or coords.shape[0] != planes.shape[0] or coords.shape[2] != 3:
        raise ValueError(f"omnifast.{op}: coords must be [N, M, 3] with N = {planes.shape[0]} "
                         f"(from planes), got {list(coords.shape)}")
    allowed = (torch.float32, planes.dtype) if planes.dtype in HALF_TYPES else (planes.dtype,)
    if coords.dtype not in allowed:
        raise TypeError(f"omnifast.{op}: coords must be of the dtype of planes ({planes.dtype}"
                        f"{' or float32' if planes.dtype in HALF_TYPES else ''}), got {coords.dtype}")
    return dims


def resolve_axes(axes, dims, op="triplane_sample"):
    """Axis binding as a tuple of 3 tuples of `dims` coordinate indices."""
    if axes is None:
        axes = "eg3d" if dims == 2 else "omniavatar"
    if isinstance(axes, str):
        valid = ("eg3d", "fixed") if dims == 2 else ("omniavatar",)
        if axes not in valid:
            kind = "planes" if dims == 2 else "volumes"
            raise ValueError(f"omnifast.{op}: axes for {kind} must be one of {valid} or 3 index "
                             f"tuples, got {axes!r}")
        return AXES[axes]
    try:
        resolved = tuple(tuple(int(i) for i in plane) for plane in axes)
    except TypeError:
        resolved = None
    if resolved is None or len(resolved) != 3 or any(len(p) != dims for p in resolved) or any(
            not 0 <= i <= 2 for p in resolved for i in p) or any(len(set(p)) != dims for p in resolved):
        raise ValueError(f"omnifast.{op}: axes must be 3 tuples of {dims} distinct coordinate "
                         f"indices in 0..2, got {axes!r}")
    return resolved


def resolve_scale(box_warp, op="triplane_sample"):
    """Per-axis factors 2 / box_warp (box_warp: a number or 3 numbers, one per world axis)."""
    if isinstance(box_warp, torch.Tensor):
        box_warp = box_warp.tolist()
    widths = [box_warp] * 3 if isinstance(box_warp, Real) else list(box_warp)
    if len(widths) != 3 or not all(isinstance(w, Real) and math.isfinite(w) and w > 0 for w in widths):
        raise ValueError(f"omnifast.{op}: box_warp must be a positive number or 3 positive numbers, "
                         f"got {box_warp!r}")
    return [2.0 / float(w) for w in widths]


def resolve_reduce(reduce, op="triplane_sample"):
    if reduce not in REDUCE:
        raise ValueError(f"omnifast.{op}: reduce must be one of {tuple(REDUCE)}, got {reduce!r}")
    return REDUCE[reduce]


def triplane_sample(planes, coords, *, box_warp=1.0, reduce="mean", axes=None):
    """Sample tri-plane (or tri-grid) features at world points, fused with the plane reduction.

    Args:
        planes: ``[N, 3, C, H, W]`` (EG3D tri-plane, bilinear) or ``[N, 3, C, D, H, W]``
            (OmniAvatar tri-grid, trilinear). float32/float64; float16/bfloat16 on CUDA
            (accumulated in float32). Any strides; a feature-last layout (channels with stride 1)
            is used without a copy, any other layout is copied to it once per call.
        coords: ``[N, M, 3]`` world coordinates, the dtype of ``planes`` (float32 also allowed with
            16-bit planes).
        box_warp: side of the cube mapped onto the planes (coordinates are scaled by
            ``2 / box_warp``); a number or one per world axis.
        reduce: ``"mean"`` or ``"sum"`` over the three planes -> ``[N, M, C]``; ``"none"`` ->
            ``[N, 3, M, C]`` (EG3D's ``sample_from_planes`` layout).
        axes: ``"eg3d"`` (default for planes: (x,y), (x,z), (z,x)), ``"fixed"`` ((x,y), (y,z),
            (z,x)), ``"omniavatar"`` (default for volumes: xyz, yzx, xzy), or explicit index
            tuples, e.g. ``((0, 1), (1, 2), (2, 0))``.

    Returns:
        Contiguous features, dtype of ``planes``. Interpolation matches
        ``grid_sample(align_corners=False, padding_mode="zeros")``: points outside the box fade
        to zero over half a texel. Differentiable with respect to ``planes`` and ``coords``, twice
        with respect to both (eikonal losses through a tri-plane).

    Example:
        >>> planes = torch.randn(2, 3, 32, 64, 64)
        >>> pts = torch.rand(2, 1000, 3) - 0.5
        >>> omnifast.triplane_sample(planes, pts).shape
        torch.Size([2, 1000, 32])
    """
    dims = check_tensors(planes, coords)
    flat_axes = [i for plane in resolve_axes(axes, dims) for i in plane]
    _C_loader.require_backend("triplane_sample", planes, coords)
    return torch.ops.omnifast.triplane_sample(
        feature_last(planes), coords, flat_axes, resolve_scale(box_warp), resolve_reduce(reduce))


def feature_last(planes):
    """``[N, 3, C, *spatial]`` -> contiguous ``[N, 3, *spatial, C]``, differentiably.

    The kernels read a texel's channels as one contiguous run. Feature-last input (channels with
    stride 1) is used as it is; anything else is copied once, and autograd keeps that copy for
    the backward, which then needs none. Its gradient is a permuted view, so it costs nothing.
    """
    moved = planes.movedim(2, -1)
    return moved if moved.is_contiguous() else torch.ops.omnifast.feature_last(planes)


class SharedPlanes:
    """Planes sampled by many calls whose plane gradients add into one buffer: a render's chunks
    of rays, each recomputed in the backward. Sampled with :func:`triplane_sample`, every chunk's
    backward returns a gradient the size of the planes and autograd holds two of them while it
    sums; here each chunk's backward adds its share into the buffer (the kernel's
    ``triplane_sample_plane_grad_add_``, which reads no plane values), handed to ``planes`` once,
    after the last chunk. First derivatives only (the renderer's); :func:`triplane_sample` for
    anything else.

    ``prepared``: the planes' feature-last copy if the caller made one (else made here, a view
    when ``planes`` already are feature-last). It is held until :meth:`release`; after it each sample
    (a chunk recomputed in the backward) makes its own and drops it once sampled, so that the
    copy is not held through the backward.

    Example:
        >>> shared = SharedPlanes(planes)
        >>> features = torch.cat([checkpoint(shared.sample, part, use_reentrant=False)
        ...                       for part in coords.split(4096, 1)], 1)
        >>> shared.release()
    """

    def __init__(self, planes, *, box_warp=1.0, reduce="mean", axes=None, prepared=None):
        dims = plane_dims(planes, "SharedPlanes")
        self.axes = [i for plane in resolve_axes(axes, dims, "SharedPlanes") for i in plane]
        self.scale, self.reduce = resolve_scale(box_warp, "SharedPlanes"), resolve_reduce(reduce, "SharedPlanes")
        self.planes = planes.detach()
        self.held = feature_last(self.planes if prepared is None else prepared.detach())
        if self.held.shape != self.planes.movedim(2, -1).shape:
            raise ValueError(f"SharedPlanes: prepared must be a copy of planes {list(planes.shape)}, "
                             f"got {list(prepared.shape)}")
        # The buffer and the gather node share a holder, not this object: a reference from
        # here to the token would make a cycle that keeps the planes alive until a collection.
        self.buffer = _GradBuffer()
        self.token = _Gather.apply(planes, self.buffer) if planes.requires_grad else None

    def release(self):
        """Stop holding the feature-last copy (see the class)."""
        self.held = None

    def sample(self, coords):
        """``coords [N, M, 3]`` -> features, as :func:`triplane_sample` with this object's
        settings."""
        check_tensors(self.planes, coords, "SharedPlanes.sample")
        planes = self.held if self.held is not None else feature_last(self.planes)
        if self.token is None or not torch.is_grad_enabled():
            return torch.ops.omnifast.triplane_sample(planes, coords, self.axes, self.scale, self.reduce)
        return _SampleShared.apply(self.token, coords, planes, self.buffer, (self.axes, self.scale, self.reduce))


class _GradBuffer:
    grad = None


class _Gather(torch.autograd.Function):
    """planes -> a zero-size token the chunks' samples hang on; its backward (after every
    chunk's) hands the summed buffer to ``planes``."""

    @staticmethod
    def forward(ctx, planes, buffer):
        ctx.buffer, ctx.dtype = buffer, planes.dtype
        return planes.new_empty(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _):
        grad, ctx.buffer.grad = ctx.buffer.grad, None
        return None if grad is None else grad.to(ctx.dtype).movedim(-1, 2), None


class _SampleShared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, coords, planes, buffer, config):
        # The planes are not kept: the plane gradient reads none of their values, and the
        # coordinate gradient (rare here) reads them from the holder.
        ctx.save_for_backward(coords)
        ctx.buffer, ctx.config, ctx.shape, ctx.dtype = buffer, config, planes.shape, planes.dtype
        ctx.planes = planes if ctx.needs_input_grad[1] else None
        return torch.ops.omnifast.triplane_sample(planes, coords, *config)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (coords,) = ctx.saved_tensors
        if ctx.buffer.grad is None:
            acc = torch.float64 if ctx.dtype == torch.float64 else torch.float32
            ctx.buffer.grad = torch.zeros(ctx.shape, dtype=acc, device=grad_out.device)
        torch.ops.omnifast.triplane_sample_plane_grad_add_(ctx.buffer.grad, grad_out, coords, *ctx.config)
        grad_coords = None
        if ctx.needs_input_grad[1]:
            grad_coords = torch.ops.omnifast.triplane_sample_backward(grad_out, ctx.planes, coords, *ctx.config,
                                                                      False, True)[1]
        return grad_out.new_zeros(0), grad_coords, None, None, None


# ---- fake (meta) kernels: shapes, dtypes and strides exactly as the C++ kernels return them ----

def _output_shape(planes_last, coords, reduce):
    n, m, c = planes_last.shape[0], coords.shape[1], planes_last.shape[-1]
    return (n, 3, m, c) if reduce == REDUCE["none"] else (n, m, c)


def _fake_plane_grad(planes_last):
    return planes_last.new_empty(planes_last.shape)


@torch.library.register_fake("omnifast::feature_last")
def _feature_last_fake(x):
    return x.new_empty(x.movedim(2, -1).shape)


@torch.library.register_fake("omnifast::triplane_sample")
def _triplane_sample_fake(planes, coords, axes, scale, reduce):
    return planes.new_empty(_output_shape(planes, coords, reduce))


@torch.library.register_fake("omnifast::triplane_sample_backward")
def _triplane_sample_backward_fake(grad_out, planes, coords, axes, scale, reduce, want_planes,
                                   want_coords):
    return (_fake_plane_grad(planes) if want_planes else planes.new_empty(0),
            coords.new_empty(coords.shape) if want_coords else coords.new_empty(0))


@torch.library.register_fake("omnifast::triplane_sample_double_backward")
def _triplane_sample_double_backward_fake(grad_grad_planes, grad_grad_coords, grad_out, planes,
                                          coords, axes, scale, reduce, want_grad_out, want_planes,
                                          want_coords):
    return (planes.new_empty(_output_shape(planes, coords, reduce)) if want_grad_out
            else planes.new_empty(0),
            _fake_plane_grad(planes) if want_planes else planes.new_empty(0),
            coords.new_empty(coords.shape) if want_coords else coords.new_empty(0))


@torch.library.register_fake("omnifast::triplane_sample_plane_grad_add_")
def _triplane_sample_plane_grad_add_fake(grad_planes, grad_out, coords, axes, scale, reduce):
    return None


@torch.library.register_fake("omnifast::triplane_sample_plane_grad_rows")
def _triplane_sample_plane_grad_rows_fake(grad_out, planes, coords, grad_grad_coords, axes, scale,
                                          reduce):
    return planes.new_empty(planes.shape)


# ---- autograd: forward -> backward op -> double-backward op ----

def _setup_forward(ctx, inputs, output):
    planes, coords, axes, scale, reduce = inputs
    ctx.save_for_backward(planes, coords)
    ctx.config = (axes, scale, reduce)


def _backward_forward(ctx, grad_out):
    planes, coords = ctx.saved_tensors
    want_planes, want_coords = ctx.needs_input_grad[:2]
    grad_planes, grad_coords = torch.ops.omnifast.triplane_sample_backward(
        grad_out, planes, coords, *ctx.config, want_planes, want_coords)
    return (grad_planes if want_planes else None, grad_coords if want_coords else None,
            None, None, None)


def _setup_backward(ctx, inputs, output):
    grad_out, planes, coords, axes, scale, reduce, want_planes, want_coords = inputs
    ctx.save_for_backward(grad_out, planes, coords)
    ctx.config = (axes, scale, reduce)
    ctx.computed = (want_planes, want_coords)


def _backward_backward(ctx, grad_grad_planes, grad_grad_coords):
    grad_out, planes, coords = ctx.saved_tensors
    # An output the backward did not compute (an empty placeholder) has no cotangent.
    if not ctx.computed[0]:
        grad_grad_planes = None
    if not ctx.computed[1]:
        grad_grad_coords = None
    wants = ctx.needs_input_grad[:3]
    grads = torch.ops.omnifast.triplane_sample_double_backward(
        grad_grad_planes, grad_grad_coords, grad_out, planes, coords, *ctx.config, *wants)
    return tuple(g if want else None for g, want in zip(grads, wants)) + (None,) * 5


def _no_third_order(ctx, *grads):
    raise NotImplementedError(
        "omnifast.triplane_sample is differentiable twice; a third derivative is not implemented")


torch.library.register_autograd("omnifast::feature_last",
                                lambda ctx, grad: grad.movedim(-1, 2),
                                setup_context=lambda ctx, inputs, output: None)
torch.library.register_autograd("omnifast::triplane_sample", _backward_forward,
                                setup_context=_setup_forward)
torch.library.register_autograd("omnifast::triplane_sample_backward", _backward_backward,
                                setup_context=_setup_backward)
torch.library.register_autograd("omnifast::triplane_sample_double_backward", _no_third_order,
                                setup_context=lambda ctx, inputs, output: None)
