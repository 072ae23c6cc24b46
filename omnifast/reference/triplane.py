"""Tri-plane sampling in plain PyTorch.

`triplane_sample` is EG3D's own pipeline (one grid_sample over the N*3 planes, then the
permute/reshape and the plane mean), generalised to any axis binding and to OmniAvatar's
volumes. `triplane_sample_gather` computes the same function from explicit corner gathers; every
step is an ordinary differentiable op, so it has second derivatives with respect to the
coordinates, which grid_sample lacks.
"""
import torch
import torch.nn.functional as F

from ..ops.triplane import plane_dims, resolve_axes, resolve_reduce, resolve_scale


def _grid(coords, axes, box_warp):
    """[N, 3, M, dims] grid coordinates: box-scaled world coordinates, permuted per plane."""
    scale = torch.tensor(resolve_scale(box_warp), dtype=coords.dtype, device=coords.device)
    scaled = coords * scale
    return torch.stack([scaled[..., list(plane)] for plane in axes], dim=1)


def _reduce(features, reduce):
    """[N, 3, M, C] -> the requested reduction."""
    code = resolve_reduce(reduce)
    if code == 0:
        return features
    return features.sum(1) if code == 1 else features.mean(1)


def triplane_sample(planes, coords, *, box_warp=1.0, reduce="mean", axes=None):
    """Reference of :func:`omnifast.triplane_sample` built on ``F.grid_sample``."""
    dims = plane_dims(planes)
    axes = resolve_axes(axes, dims)
    n, _, c = planes.shape[:3]
    m = coords.shape[1]
    grid = _grid(coords, axes, box_warp).reshape(n * 3, 1, m, dims)
    if dims == 3:
        grid = grid.unsqueeze(1)  # [N*3, 1, 1, M, 3]
    flat = planes.reshape(n * 3, *planes.shape[2:])
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.reshape(n * 3, c, m).permute(0, 2, 1).reshape(n, 3, m, c)
    return _reduce(out, reduce)


def triplane_sample_gather(planes, coords, *, box_warp=1.0, reduce="mean", axes=None):
    """The same function from explicit corner gathers (twice differentiable in ``coords``)."""
    dims = plane_dims(planes)
    axes = resolve_axes(axes, dims)
    n, _, c = planes.shape[:3]
    spatial = planes.shape[3:][::-1]  # sizes along grid axes W, H, (D)
    grid = _grid(coords, axes, box_warp)  # [N, 3, M, dims]
    pix = ((grid + 1) * torch.tensor(spatial, dtype=grid.dtype, device=grid.device) - 1) / 2
    lower = pix.detach().floor()
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
    return _reduce(out.permute(0, 1, 3, 2), reduce)
