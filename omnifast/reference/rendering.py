"""Volume compositing in plain PyTorch: EG3D's MipRayMarcher2 chain, op for op, with
OmniAvatar's SDF prior density in front of it. The definition of correct for
omnifast.composite."""
from collections import namedtuple

import torch
import torch.nn.functional as F

CompositeResult = namedtuple("CompositeResult", ["features", "depth", "opacity", "weights"])


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


def march(colors, densities, depths, *, mode="midpoint", white_back=False,
          force_background=False, clamp_depth=True):
    """EG3D's MipRayMarcher2.run_forward (midpoint) or OmniAvatar's run_forward_absorption,
    without the final x2 - 1. Inputs [..., S, C], [..., S, 1], [..., S, 1]. force_background
    (OmniAvatar): the last weight becomes 1 minus the sum of the others."""
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
    if force_background:
        weights = torch.cat([weights[..., :-1, :],
                             1 - weights[..., :-1, :].sum(-2, keepdim=True)], -2)
    composite = torch.sum(weights * colors, -2)
    weight_total = weights.sum(-2)
    depth = torch.sum(weights * depths_used, -2) / weight_total
    depth = torch.nan_to_num(depth, float("inf"))
    if clamp_depth:
        depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
    if white_back:
        composite = composite + 1 - weight_total
    return composite, depth, weight_total, weights


def composite(features, field, depths, *, field_type="sdf", beta=None, density_delta=None,
              mode="midpoint", white_back=False, return_weights=False, clamp_depth=True):
    """Reference of :func:`omnifast.composite` (same arguments, a named tuple with the same fields)."""
    squeeze = field.dim() == features.dim() - 1
    per_sample = lambda t: t.unsqueeze(-1) if t.dim() == features.dim() - 1 else t  # noqa: E731
    field, depths = per_sample(field), per_sample(depths)
    delta = None if density_delta is None else per_sample(density_delta)
    densities = raw_density(field, field_type, beta, delta)
    out, depth, opacity, weights = march(features, densities, depths, mode=mode,
                                         white_back=white_back, clamp_depth=clamp_depth)
    if return_weights:
        weights = weights.squeeze(-1) if squeeze else weights
    return CompositeResult(out, depth, opacity, weights if return_weights else None)


def sample_pdf(bins, weights, n, u, eps=1e-5):
    """EG3D's sample_pdf with given uniforms u [rays, n]: [rays, n] depths in u's order."""
    n_bins = weights.shape[-1]
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
    inds = torch.searchsorted(cdf, u.contiguous(), right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, n_bins)
    both = torch.stack([below, above], -1).view(u.shape[0], 2 * n)
    cdf_g = torch.gather(cdf, 1, both).view(u.shape[0], n, 2)
    bins_g = torch.gather(bins, 1, both).view(u.shape[0], n, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom[denom < eps] = 1
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def sample_importance(depths, weights, n, u):
    """EG3D's sample_importance on [rays, S] depths and [rays, L] weights with uniforms u."""
    with torch.no_grad():
        smoothed = F.max_pool1d(weights.unsqueeze(1), 2, 1, padding=1)
        smoothed = F.avg_pool1d(smoothed, 2, 1).squeeze(1) + 0.01
        mids = 0.5 * (depths[:, :-1] + depths[:, 1:])
        return sample_pdf(mids, smoothed[:, 1:-1], n, u)


def merge_samples(depths_coarse, depths_fine, values_coarse=(), values_fine=()):
    """EG3D's unify_samples with a stable sort (coarse first on ties)."""
    depths = torch.cat([depths_coarse, depths_fine], -2)
    _, order = torch.sort(depths, dim=-2, stable=True)
    merged = [torch.gather(torch.cat([c, f], -2), -2, order.expand(*order.shape[:-1], c.shape[-1]))
              for c, f in zip(values_coarse, values_fine)]
    return torch.gather(depths, -2, order), merged
