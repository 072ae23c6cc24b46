"""Cameras and rays: pinhole look-at cameras and the clipping of rays to a box."""
import math

import torch


def look_at_rays(size, distance, yaw, pitch, fov_degrees, centre):
    """Rays through the pixel centres of a ``size`` x ``size`` pinhole camera ``distance`` from
    ``centre`` (a ``[3]`` tensor), turned by ``yaw`` about the y axis and ``pitch`` up from the
    horizon (radians), looking at the centre with y up: ``(origins [R, 3], unit directions
    [R, 3])``, R = size^2 in row-major pixel order (top row first)."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    forward = -torch.tensor([sy * cp, sp, cy * cp], dtype=centre.dtype)
    origin = centre.cpu() - forward * distance
    right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], dtype=centre.dtype))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    half = math.tan(math.radians(fov_degrees) / 2)
    t = (torch.arange(size, dtype=centre.dtype) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(-t * half, t * half, indexing="ij")
    directions = forward + u.reshape(-1, 1) * right + v.reshape(-1, 1) * up
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return origin.expand_as(directions).to(centre.device), directions.to(centre.device)


def ray_box_intersection(origins, directions, box_min, box_max):
    """Where rays ``[..., 3]`` are inside the axis-aligned box (slab test): ``(near, far)``,
    each ``[...]``, with ``near`` clamped at 0 (the origin) and ``far <= near`` for rays that miss."""
    t0, t1 = (box_min - origins) / directions, (box_max - origins) / directions
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far
