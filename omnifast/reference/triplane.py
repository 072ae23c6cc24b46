"""Tri-plane sampling in plain PyTorch.

`triplane_sample` is EG3D's own pipeline (one grid_sample over the N*3 planes, then the
permute/reshape and the plane mean), generalised to any axis binding and to OmniAvatar's
volumes. `triplane_sample_gather` computes the same function from explicit corner gathers; every
step is an ordinary differentiable op, so it has second derivatives with respect to the
coordinates, which grid_sample lacks. A point with a non-finite coordinate has NaN features, as
EG3D's projection gives it. Both parse their own arguments.
"""
import math
from numbers import Real

import torch
import torch.nn.functional as F

# Coordinate components feeding each plane's grid axes (W, H, then D): EG3D's released
# (x, y), (x, z), (z, x); its fixed_triplanes branch; OmniAvatar's volumes xyz, yzx, xzy.
AXES = {"eg3d": ((0, 1), (0, 2), (2, 0)), "fixed": ((0, 1), (1, 2), (2, 0)),
        "omniavatar": ((0, 1, 2), (1, 2, 0), (0, 2, 1))}


def _options(planes, box_warp, axes):
    """(dims, axes as index tuples, per-axis scale 2 / box_warp)."""
    if planes.dim() not in (5, 6) or planes.shape[1] != 3:
        raise ValueError(f"planes must be [N, 3, C, H, W] or [N, 3, C, D, H, W], got {list(planes.shape)}")
    dims = planes.dim() - 3
    if axes is None or isinstance(axes, str):
        axes = AXES[axes or ("eg3d" if dims == 2 else "omniavatar")]
    axes = tuple(tuple(int(i) for i in plane) for plane in axes)
    if isinstance(box_warp, torch.Tensor):
        box_warp = box_warp.tolist()
    widths = [box_warp] * 3 if isinstance(box_warp, Real) else list(box_warp)
    if len(widths) != 3 or not all(math.isfinite(w) and w > 0 for w in widths):
        raise ValueError(f"box_warp must be a positive number or 3 of them, got {box_warp!r}")
    return dims, axes, [2.0 / float(w) for w in widths]


def _grid(coords, axes, scale):
    """[N, 3, M, dims] grid coordinates: box-scaled world coordinates, permuted per plane."""
    scaled = coords * torch.tensor(scale, dtype=coords.dtype, device=coords.device)
    return torch.stack([scaled[..., list(plane)] for plane in axes], dim=1)


def _finish(features, coords, reduce):
    """[N, 3, M, C] -> NaN at non-finite points, then the requested reduction."""
    finite = coords.isfinite().all(-1)[:, None, :, None]
    features = torch.where(finite, features, torch.full_like(features, math.nan))
    if reduce not in ("none", "sum", "mean"):
        raise ValueError(f"reduce must be 'none', 'sum' or 'mean', got {reduce!r}")
    return features if reduce == "none" else features.sum(1) if reduce == "sum" else features.mean(1)


def triplane_sample(planes, coords, *, box_warp=1.0, reduce="mean", axes=None):
    """Reference of :func:`omnifast.triplane_sample` built on ``F.grid_sample``."""
    dims, axes, scale = _options(planes, box_warp, axes)
    n, _, c = planes.shape[:3]
    m = coords.shape[1]
    grid = _grid(coords, axes, scale).reshape(n * 3, 1, m, dims)
    if dims == 3:
        grid = grid.unsqueeze(1)  # [N*3, 1, 1, M, 3]
    flat = planes.reshape(n * 3, *planes.shape[2:])
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.reshape(n * 3, c, m).permute(0, 2, 1).reshape(n, 3, m, c)
    return _finish(out, coords, reduce)


def triplane_sample_gather(planes, coords, *, box_warp=1.0, reduce="mean", axes=None):
    """The same function from explicit corner gathers (twice differentiable in ``coords``)."""
    dims, axes, scale = _options(planes, box_warp, axes)
    n, _, c = planes.shape[:3]
    spatial = planes.shape[3:][::-1]  # sizes along grid axes W, H, (D)
    grid = _grid(coords, axes, scale)  # [N, 3, M, dims]
    pix = ((grid + 1) * torch.tensor(spatial, dtype=grid.dtype, device=grid.device) - 1) / 2
    lower = pix.detach().nan_to_num(0, 0, 0).floor()  # non-finite points: any corner, NaN after
    frac = pix - lower
    lower = lower.long()
    texels = planes.reshape(n, 3, c, -1)  # flattened (D,) H, W
    out = 0
    for corner in range(1 << dims):
        bits = [(corner >> a) & 1 for a in range(dims)]
        weight = 1
        flat_index = 0
        inside = torch.ones_like(lower[..., 0], dtype=torch.bool)
        stride = 1
        for a, bit in enumerate(bits):
            idx = lower[..., a] + bit
            inside = inside & (idx >= 0) & (idx < spatial[a])
            weight = weight * (frac[..., a] if bit else 1 - frac[..., a])
            flat_index = flat_index + idx.clamp(0, spatial[a] - 1) * stride
            stride *= spatial[a]
        gathered = torch.gather(texels, 3, flat_index.unsqueeze(2).expand(n, 3, c, -1))
        out = out + gathered * (weight * inside).unsqueeze(2)
    return _finish(out.permute(0, 1, 3, 2), coords, reduce)
