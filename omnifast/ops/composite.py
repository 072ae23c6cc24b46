"""Fused SDF-to-density volume rendering: EG3D's MipRayMarcher2 chain in one pass per ray."""
import math
from collections import namedtuple
from numbers import Real

import torch

from .. import _C_loader

CompositeResult = namedtuple("CompositeResult", ["features", "depth", "opacity", "weights"])
FIELD_TYPES = _C_loader.choices(_C_loader.C.CompositeField)
MODES = _C_loader.choices(_C_loader.C.CompositeMode)


def as_samples(t, features):
    """A per-sample tensor as ``[..., S, 1]`` (given as ``[..., S]`` or ``[..., S, 1]``)."""
    return t.unsqueeze(-1) if t.dim() == features.dim() - 1 else t


def _check(features, field, depths, density_delta, field_type, mode, beta):
    op = "composite"
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        raise ValueError(f"omnifast.{op}: features must be a tensor [..., S, C], got "
                         f"{list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    lead, samples = tuple(features.shape[:-2]), features.shape[-2]
    if samples < 2:
        raise ValueError(f"omnifast.{op}: features must have at least 2 samples per ray "
                         f"([..., S, C] with S >= 2), got {list(features.shape)}")
    allowed = (lead + (samples,), lead + (samples, 1))
    for name, t in (("field", field), ("depths", depths), ("density_delta", density_delta)):
        if t is None and name == "density_delta":
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) not in allowed:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"omnifast.{op}: {name} must be {list(allowed[1])} or "
                             f"{list(allowed[0])} (from features {list(features.shape)}), got {got}")
        if t.device != features.device:
            raise ValueError(f"omnifast.{op}: {name} must be on the device of features "
                             f"({features.device}), got {t.device}")
    if field_type not in FIELD_TYPES:
        raise ValueError(f"omnifast.{op}: field_type must be one of {tuple(FIELD_TYPES)}, "
                         f"got {field_type!r}")
    if mode not in MODES:
        raise ValueError(f"omnifast.{op}: mode must be one of {tuple(MODES)}, got {mode!r}")
    if field_type != "density" and beta is None:
        raise ValueError(f"omnifast.{op}: beta must be given for field_type={field_type!r}")
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (Real, torch.Tensor))):
        raise TypeError(f"omnifast.{op}: beta must be a positive number or a one-element tensor, "
                        f"got {type(beta).__name__} {beta!r}")
    if isinstance(beta, Real) and not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"omnifast.{op}: beta must be positive, got {beta!r}")


def composite(features, field, depths, *, field_type="sdf", beta=None, density_delta=None,
              mode="midpoint", white_back=False, return_weights=False, clamp_depth=True):
    """Composite per-sample features along rays, from an SDF or a density, in one fused pass.

    Reproduces EG3D's ``MipRayMarcher2`` (midpoint mode) and OmniAvatar's absorption mode
    exactly, without the final ``x2 - 1`` (the drop-ins in :mod:`omnifast.eg3d` add it where the
    originals do). Only the inputs and the per-ray outputs are kept for the backward; no
    ``[rays, samples, C]`` intermediate is stored.

    Args:
        features: ``[..., S, C]`` per-sample features (float32/float64; float16/bfloat16 on CUDA).
        field: ``[..., S, 1]`` or ``[..., S]``: a signed distance (``field_type="sdf"``:
            density ``sigmoid(-s / beta) / beta``, OmniAvatar's prior; ``"sdf_laplace"``: VolSDF's
            Laplace CDF) or a raw density (``"density"``, EG3D's decoder output).
        depths: like ``field``, sorted along each ray.
        beta: positive scale of the SDF density, a number or a one-element tensor (learnable:
            its gradient is returned).
        density_delta: like ``field``, added to the raw density (the decoder's correction).
        mode: ``"midpoint"`` (S - 1 intervals between neighbouring samples, EG3D) or
            ``"absorption"`` (S intervals, the last 1e10 long; OmniAvatar).
        white_back: add ``1 - opacity`` to every feature channel.
        return_weights: also return the per-interval weights (for importance sampling).
        clamp_depth: ``False`` leaves out EG3D's clamp of ``depth`` to the range of the whole
            ``depths`` tensor (which a single NaN depth turns NaN for every ray); the caller
            clamps, for example per image.

    Returns:
        ``CompositeResult(features [..., C], depth [..., 1], opacity [..., 1], weights)``;
        ``weights`` is ``None`` unless asked for, else ``[..., L, 1]`` or ``[..., L]`` like
        ``field``. ``depth`` is EG3D's: ``sum(w z) / opacity``, NaN turned into +inf, clamped to
        the min/max of the whole ``depths`` tensor. Differentiable with respect to ``features``,
        ``field``, ``depths``, ``density_delta`` and ``beta``.
    """
    _check(features, field, depths, density_delta, field_type, mode, beta)
    _C_loader.require_backend("composite", features, field, depths)
    lead, (samples, channels) = features.shape[:-2], features.shape[-2:]
    rays = math.prod(lead)
    flat = lambda t: as_samples(t, features).reshape(rays, samples)  # noqa: E731
    acc_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    if beta is not None and not isinstance(beta, torch.Tensor):
        beta = torch.tensor([float(beta)], dtype=acc_dtype, device=features.device)
    out, opacity, depth_raw, weights, _ = torch.ops.omnifast.composite(
        features.reshape(rays, samples, channels), flat(field), flat(depths), beta,
        None if density_delta is None else flat(density_delta), FIELD_TYPES[field_type],
        MODES[mode], return_weights)
    # EG3D's depth finish, on the per-ray values: the clamp spans the whole depths tensor.
    depth = torch.nan_to_num(depth_raw, float("inf"))
    if clamp_depth and depths.numel():
        depth = torch.clamp(depth, depths.min(), depths.max())
    out = out.reshape(*lead, channels)
    opacity = opacity.reshape(*lead, 1)
    if white_back:
        out = out + (1 - opacity)
    if return_weights:
        intervals = samples - 1 if mode == "midpoint" else samples
        weights = weights.reshape(*lead, intervals, *((1,) if field.dim() == features.dim() else ()))
    return CompositeResult(out, depth.reshape(*lead, 1), opacity, weights if return_weights else None)


def _strip_trailing_one(t, reference_dim):
    """[..., K, 1] -> [..., K] when t has the rank of the depths given with a trailing 1."""
    return t[..., 0] if t.dim() == reference_dim and t.shape[-1] == 1 else t


def importance_uniforms(rays, n, *, deterministic=False, generator=None, device=None, dtype=torch.float32,
                        stratified=False):
    """The sorted quantiles ``[rays, n]`` :func:`importance_sample` inverts: evenly spaced
    (``linspace(0, 1, n)``), ``torch.rand((rays, n))`` as EG3D draws them (float32, then
    ``dtype``), or with ``stratified`` one draw in each of ``n`` equal strata ``(k + rand) / n``
    (no gaps wider than two strata). Sorted draws give sorted depths."""
    if deterministic:
        return torch.linspace(0, 1, n, device=device, dtype=dtype).expand(rays, n).contiguous()
    u = torch.rand((rays, n), device=device, generator=generator)
    if stratified:
        return ((torch.arange(n, device=device, dtype=u.dtype) + u) / n).to(dtype)
    return torch.sort(u.to(dtype), dim=-1).values


def importance_sample(depths, weights, n, *, deterministic=False, generator=None, stratified=False):
    """EG3D's importance sampling, fused: weight smoothing (max-pool then avg-pool, +0.01),
    pdf, cdf, search and interpolation in one pass per ray.

    Args:
        depths: ``[..., S, 1]`` or ``[..., S]`` coarse depths, sorted along each ray.
        weights: the compositing weights of those samples, ``[..., S - 1(, 1)]`` (midpoint) or
            ``[..., S(, 1)]`` (absorption), as :func:`composite` returns them.
        n: number of depths to draw per ray.
        deterministic: evenly spaced quantiles (``linspace(0, 1, n)``, OmniAvatar's
            ``det_sampling``) instead of uniform draws.
        generator: for the draws, which are ``torch.rand((rays, n))`` exactly as EG3D makes them.
        stratified: one draw in each of ``n`` equal quantile strata instead of EG3D's sorted
            uniform draws.

    Returns:
        ``[..., n, 1]`` (or ``[..., n]``, like ``depths``) sorted depths, detached (EG3D samples
        under ``no_grad``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"omnifast.importance_sample: n must be a positive integer, got {n!r}")
    with_one = depths.dim() >= 2 and depths.shape[-1] == 1
    z = _strip_trailing_one(depths, depths.dim()) if with_one else depths
    w = _strip_trailing_one(weights, depths.dim()) if with_one else weights
    if z.dim() < 1 or w.shape[:-1] != z.shape[:-1]:
        raise ValueError(f"omnifast.importance_sample: weights must be [..., L] or [..., L, 1] "
                         f"with the rays of depths {list(depths.shape)}, got {list(weights.shape)}")
    _C_loader.require_backend("importance_sample", depths)
    lead, samples, count = z.shape[:-1], z.shape[-1], w.shape[-1]
    rays = math.prod(lead)
    with torch.no_grad():
        u = importance_uniforms(rays, n, deterministic=deterministic, generator=generator, device=z.device,
                                dtype=z.dtype, stratified=stratified)
        out = torch.ops.omnifast.importance_sample(z.reshape(rays, samples),
                                                   w.detach().reshape(rays, count), u)
    out = out.reshape(*lead, n)
    return out.unsqueeze(-1) if with_one else out


def merge_samples(depths_coarse, depths_fine, values_coarse=(), values_fine=()):
    """Merge two per-ray sorted depth lists (and values that follow them) in depth order without
    a full sort; ties keep the coarse sample first, like a stable sort of the concatenation.

    Args:
        depths_coarse: ``[..., S, 1]`` or ``[..., S]``; depths_fine: ``[..., n(, 1)]``; both sorted.
        values_coarse, values_fine: matching sequences of ``[..., S, K]`` / ``[..., n, K]`` tensors
            (colours, densities), merged the same way (differentiably).

    Returns:
        ``(depths [..., S + n(, 1)], [merged values])``.
    """
    with_one = depths_coarse.dim() >= 2 and depths_coarse.shape[-1] == 1
    zc = depths_coarse[..., 0] if with_one else depths_coarse
    zf = depths_fine[..., 0] if with_one else depths_fine
    if zc.shape[:-1] != zf.shape[:-1]:
        raise ValueError(f"omnifast.merge_samples: depths_fine must have the rays of depths_coarse "
                         f"{list(depths_coarse.shape)}, got {list(depths_fine.shape)}")
    if len(values_coarse) != len(values_fine):
        raise ValueError("omnifast.merge_samples: values_coarse and values_fine must pair up, got "
                         f"{len(values_coarse)} and {len(values_fine)}")
    for i, (c, f) in enumerate(zip(values_coarse, values_fine)):
        if c.shape[:-1] != zc.shape or f.shape[:-1] != zf.shape or c.shape[-1] != f.shape[-1]:
            raise ValueError(f"omnifast.merge_samples: values {i} must be [..., S, K] and [..., n, K] "
                             f"along depths {list(zc.shape)} and {list(zf.shape)}, got "
                             f"{list(c.shape)} and {list(f.shape)}")
    _C_loader.require_backend("merge_samples", depths_coarse)
    lead, s, n = zc.shape[:-1], zc.shape[-1], zf.shape[-1]
    rays = math.prod(lead)
    order = torch.ops.omnifast.merge_order(zc.reshape(rays, s).detach(),
                                           zf.reshape(rays, n).detach()).reshape(*lead, s + n)
    depths = torch.gather(torch.cat([zc, zf], -1), -1, order)
    merged = [torch.gather(torch.cat([c, f], -2), -2,
                           order.unsqueeze(-1).expand(*order.shape, c.shape[-1]))
              for c, f in zip(values_coarse, values_fine)]
    return (depths.unsqueeze(-1) if with_one else depths), merged


# ---- fake (meta) kernels ----

@torch.library.register_fake("omnifast::importance_sample")
def _importance_sample_fake(depths, weights, u):
    return depths.new_empty(u.shape)


@torch.library.register_fake("omnifast::merge_order")
def _merge_order_fake(coarse, fine):
    return coarse.new_empty((coarse.shape[0], coarse.shape[1] + fine.shape[1]), dtype=torch.long)



def _intervals(samples, mode):
    return samples - 1 if mode == MODES["midpoint"] else samples


@torch.library.register_fake("omnifast::composite")
def _composite_fake(features, field, depths, beta, density_delta, field_type, mode, want_weights):
    rays, samples, channels = features.shape
    weights = (field.new_empty(rays, _intervals(samples, mode)) if want_weights
               else field.new_empty(0))
    return (features.new_empty(rays, channels), field.new_empty(rays), field.new_empty(rays),
            weights, field.new_empty(rays, dtype=torch.float64))


@torch.library.register_fake("omnifast::composite_backward")
def _composite_backward_fake(grad_features, grad_opacity, grad_depth, grad_weights, features,
                             field, depths, beta, density_delta, opacity, depth_raw,
                             log_transmittance, field_type, mode):
    return (features.new_empty(features.shape), field.new_empty(field.shape),
            field.new_empty(field.shape),
            field.new_empty(field.shape) if density_delta is not None else field.new_empty(0),
            field.new_empty(beta.shape) if beta is not None else field.new_empty(0))


# ---- autograd ----

def _setup(ctx, inputs, output):
    features, field, depths, beta, density_delta, field_type, mode, _ = inputs
    _, opacity, depth_raw, _, log_transmittance = output
    ctx.save_for_backward(features, field, depths, beta, density_delta, opacity, depth_raw,
                          log_transmittance)
    ctx.config = (field_type, mode)


def _backward(ctx, grad_out, grad_opacity, grad_depth, grad_weights, _grad_log_transmittance):
    saved = ctx.saved_tensors
    grads = torch.ops.omnifast.composite_backward(
        grad_out, grad_opacity, grad_depth, grad_weights, *saved, *ctx.config)
    grad_features, grad_field, grad_depths, grad_delta, grad_beta = grads
    wants = ctx.needs_input_grad
    return (grad_features if wants[0] else None, grad_field if wants[1] else None,
            grad_depths if wants[2] else None, grad_beta if wants[3] else None,
            grad_delta if wants[4] else None, None, None, None)


def _no_second_order(ctx, *grads):
    raise NotImplementedError("omnifast.composite is differentiable once; a second derivative "
                              "is not implemented")


torch.library.register_autograd("omnifast::composite", _backward, setup_context=_setup)
torch.library.register_autograd("omnifast::composite_backward", _no_second_order,
                                setup_context=lambda ctx, inputs, output: None)
