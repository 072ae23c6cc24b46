"""Volume compositing in plain PyTorch: EG3D's MipRayMarcher2 chain, op for op, with
OmniAvatar's SDF prior density in front of it. The definition of correct for
omnifast.composite."""
import torch
import torch.nn.functional as F


def sdf_density(sdf, beta):
    """OmniAvatar's prior: sigmoid(-s / beta) / beta."""
    return torch.sigmoid(-sdf / beta) / beta


def laplace_density(sdf, beta):
    """VolSDF: the Laplace CDF (scale beta) of -s, over beta."""
    e = 0.5 * torch.exp(-sdf.abs() / beta)
    return torch.where(sdf >= 0, e, 1 - e) / beta


def raw_density(field, field_type, beta, density_delta):
    if field_type == "sdf":
        sigma = sdf_density(field, beta)
    elif field_type == "sdf_laplace":
        sigma = laplace_density(field, beta)
    else:
        sigma = field
    return sigma if density_delta is None else sigma + density_delta


def march(colors, densities, depths, *, mode="midpoint", white_back=False):
    """EG3D's MipRayMarcher2.run_forward (midpoint) or OmniAvatar's run_forward_absorption,
    without the final x2 - 1. Inputs [..., S, C], [..., S, 1], [..., S, 1]."""
    if mode == "midpoint":
        deltas = depths[..., 1:, :] - depths[..., :-1, :]
        colors = (colors[..., :-1, :] + colors[..., 1:, :]) / 2
        densities = (densities[..., :-1, :] + densities[..., 1:, :]) / 2
        depths_used = (depths[..., :-1, :] + depths[..., 1:, :]) / 2
    else:
        deltas = depths[..., 1:, :] - depths[..., :-1, :]
        deltas = torch.cat([deltas, 1e10 * torch.ones_like(deltas[..., :1, :])], -2)
        depths_used = depths
    densities = F.softplus(densities - 1)
    alpha = 1 - torch.exp(-densities * deltas)
    alpha_shifted = torch.cat([torch.ones_like(alpha[..., :1, :]), 1 - alpha + 1e-10], -2)
    weights = alpha * torch.cumprod(alpha_shifted, -2)[..., :-1, :]
    composite = torch.sum(weights * colors, -2)
    weight_total = weights.sum(-2)
    depth = torch.sum(weights * depths_used, -2) / weight_total
    depth = torch.nan_to_num(depth, float("inf"))
    depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
    if white_back:
        composite = composite + 1 - weight_total
    return composite, depth, weight_total, weights


def composite(features, field, depths, *, field_type="sdf", beta=None, density_delta=None,
              mode="midpoint", white_back=False, return_weights=False):
    """Reference of :func:`omnifast.composite` (same arguments, same named tuple)."""
    from ..ops.composite import CompositeResult, as_samples

    squeeze = field.dim() == features.dim() - 1
    field, depths = as_samples(field, features), as_samples(depths, features)
    delta = None if density_delta is None else as_samples(density_delta, features)
    densities = raw_density(field, field_type, beta, delta)
    out, depth, opacity, weights = march(features, densities, depths, mode=mode,
                                         white_back=white_back)
    if return_weights:
        weights = weights.squeeze(-1) if squeeze else weights
    return CompositeResult(out, depth, opacity, weights if return_weights else None)
