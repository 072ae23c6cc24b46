"""Cameras and rays, as EG3D defines them.

A camera label is EG3D's 25 numbers: the OpenCV cam2world matrix (x right, y down, z forward)
flattened row-major, then the 3x3 intrinsics normalised by the image size (focal lengths in
image widths, principal point 0.5). OmniAvatar appends the FLAME parameters to it."""
import math

import torch

FFHQ_FOV_DEGREES = 18.837   # EG3D's FFHQ field of view (its generation scripts' default)
FFHQ_FOCAL = 4.2647         # EG3D's FFHQ training focal length, in image widths
FFHQ_RADIUS = 2.7           # EG3D's FFHQ camera distance from the pivot
LABEL_SIZE = 25


def fov_to_intrinsics(fov_degrees, *, dtype=torch.float32, device=None):
    """EG3D's ``FOV_to_intrinsics``: ``[3, 3]`` normalised intrinsics, focal
    ``1 / (tan(fov / 2) * 1.414)`` (EG3D's constants kept: 18.837 degrees gives 4.2634, near
    the 4.2647 its FFHQ training labels use)."""
    if not (isinstance(fov_degrees, (int, float)) and 0 < fov_degrees < 180):
        raise ValueError(f"fov_degrees must be a number in (0, 180), got {fov_degrees!r}")
    focal = float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))
    return torch.tensor([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1]], dtype=dtype, device=device)


def _normalize(v):
    return v / torch.norm(v, dim=-1, keepdim=True)


def cam2world_looking_at(origins, targets):
    """EG3D's ``create_cam2world_matrix``: ``[B, 4, 4]`` OpenCV cam2world matrices for cameras at
    ``origins [B, 3]`` looking at ``targets [B, 3]`` (or ``[3]``), world y up, no roll (the
    direction normalised twice, as EG3D's samplers and ``create_cam2world_matrix`` do)."""
    forward = _normalize(_normalize(targets - origins))
    up = torch.tensor([0.0, 1.0, 0.0], dtype=origins.dtype, device=origins.device).expand_as(forward)
    right = -_normalize(torch.linalg.cross(up, forward))
    up = _normalize(torch.linalg.cross(forward, right))
    cam2world = torch.eye(4, dtype=origins.dtype, device=origins.device).repeat(origins.shape[0], 1, 1)
    cam2world[:, :3, :3] = torch.stack((right, up, forward), dim=-1)
    cam2world[:, :3, 3] = origins
    return cam2world


def orbit_cam2world(yaw, pitch, radius=FFHQ_RADIUS, pivot=(0.0, 0.0, 0.0), *, yaw_std=0.0,
                    pitch_std=0.0, batch=1, generator=None, dtype=torch.float32, device=None):
    """EG3D's ``LookAtPoseSampler``: ``[batch, 4, 4]`` cameras on a sphere of ``radius`` about
    ``pivot`` looking at it. ``yaw`` is the azimuth about the y axis and ``pitch`` the polar angle
    from +y (radians; ``pi/2, pi/2`` is the frontal camera on +z), each Gaussian with its std
    (EG3D's ``GaussianCameraPoseSampler`` when the pivot is the origin); numbers or ``[batch]``
    tensors."""
    if not (isinstance(radius, (int, float)) and radius > 0):
        raise ValueError(f"radius must be a positive number, got {radius!r}")
    g = dict(generator=generator, dtype=dtype, device=device)
    h = torch.randn((batch, 1), **g) * yaw_std + torch.as_tensor(yaw, dtype=dtype, device=device).reshape(-1, 1)
    v = torch.randn((batch, 1), **g) * pitch_std + torch.as_tensor(pitch, dtype=dtype, device=device).reshape(-1, 1)
    v = torch.clamp(v, 1e-5, math.pi - 1e-5)
    phi = torch.arccos(1 - 2 * (v / math.pi))
    origins = torch.cat([radius * torch.sin(phi) * torch.cos(math.pi - h), radius * torch.cos(phi),
                         radius * torch.sin(phi) * torch.sin(math.pi - h)], -1)
    pivot = torch.as_tensor(pivot, dtype=dtype, device=device).expand_as(origins)
    return cam2world_looking_at(origins, pivot)


def ffhq_intrinsics(*, dtype=torch.float32, device=None):
    """The ``[3, 3]`` normalised intrinsics of EG3D's FFHQ labels (focal 4.2647)."""
    return torch.tensor([[FFHQ_FOCAL, 0, 0.5], [0, FFHQ_FOCAL, 0.5], [0, 0, 1]], dtype=dtype, device=device)


def camera_labels(cam2world, intrinsics):
    """``[B, 25]`` labels from ``[B, 4, 4]`` cam2world and ``[B, 3, 3]`` (or ``[3, 3]``)
    intrinsics."""
    intrinsics = intrinsics.expand(cam2world.shape[0], 3, 3)
    return torch.cat([cam2world.reshape(-1, 16), intrinsics.reshape(-1, 9)], -1)


def check_camera_labels(labels, name="labels", row_names=None):
    """Refuse camera labels ``[B, >= 25]`` that describe no camera: a cam2world whose rotation
    is not a rotation (orthonormal within 1e-2, determinant +1) or whose bottom row is not
    ``0 0 0 1``, a non-finite position, intrinsics that are not finite with positive focal
    lengths and bottom row ``0 0 1``. The error names the first bad label's row (and its entry
    of ``row_names``)."""
    cam2world, intrinsics, _ = split_labels(labels, name)
    if not labels.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {labels.dtype}")
    with torch.no_grad():
        c2w, k = cam2world.double(), intrinsics.double()
        rotation = c2w[:, :3, :3]
        eye = torch.eye(3, dtype=torch.float64, device=labels.device)
        problems = {
            "a cam2world that is not finite": ~torch.isfinite(c2w).flatten(1).all(1),
            "a cam2world rotation that is not a rotation (orthonormal, determinant +1)":
                ((rotation.transpose(1, 2) @ rotation - eye).abs().flatten(1).amax(1) > 1e-2)
                | (torch.linalg.det(rotation) <= 0),
            "a cam2world bottom row other than 0 0 0 1":
                (c2w[:, 3] - c2w.new_tensor([0, 0, 0, 1])).abs().amax(1) > 1e-4,
            "intrinsics that are not finite": ~torch.isfinite(k).flatten(1).all(1),
            "intrinsics whose focal lengths are not positive": (k[:, 0, 0] <= 0) | (k[:, 1, 1] <= 0),
            "intrinsics whose bottom row is not 0 0 1": (k[:, 2] - k.new_tensor([0, 0, 1])).abs().amax(1) > 1e-4,
            # Far beyond any camera of a head (EG3D's sit 2.7 from it; the principal point is 0.5).
            "a camera position farther than 1e4 from the origin": c2w[:, :3, 3].norm(dim=1) > 1e4,
            "a principal point beyond 100 image widths": k[:, :2, 2].abs().amax(1) > 100,
        }
        bad = torch.stack(list(problems.values()), 1)
        if bad.any():
            row, which = (int(v) for v in bad.nonzero()[0])
            where = f"row {row}" + (f" ({row_names[row]})" if row_names is not None else "")
            raise ValueError(f"{name}: {where} has {list(problems)[which]}: cam2world "
                             f"{[round(v, 4) for v in c2w[row].flatten().tolist()]}, intrinsics "
                             f"{[round(v, 4) for v in k[row].flatten().tolist()]}")


def split_labels(labels, name="labels"):
    """``[B, >= 25]`` labels -> ``(cam2world [B, 4, 4], intrinsics [B, 3, 3], rest [B, K])``."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.shape[1] < LABEL_SIZE:
        got = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be [B, 25 + K] (cam2world 16 | intrinsics 9 | ...), got {got}")
    return (labels[:, :16].reshape(-1, 4, 4), labels[:, 16:25].reshape(-1, 3, 3),
            labels[:, LABEL_SIZE:])


def camera_rays(cam2world, intrinsics, resolution):
    """EG3D's ``RaySampler``: ``(origins [B, R^2, 3], unit directions [B, R^2, 3])`` through the
    pixel centres of an ``R x R`` image (ray ``i * R + j`` for row ``i``, column ``j``), with the
    intrinsics' skew, in EG3D's order of operations."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    B, dtype, device = cam2world.shape[0], cam2world.dtype, cam2world.device
    fx, fy = intrinsics[:, 0, 0], intrinsics[:, 1, 1]
    cx, cy, skew = intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 0, 1]
    index = torch.arange(resolution, dtype=torch.float32, device=device)
    uv = torch.stack(torch.meshgrid(index, index, indexing="ij")) * (1.0 / resolution) + (0.5 / resolution)
    uv = uv.flip(0).reshape(2, -1).transpose(1, 0).to(dtype).unsqueeze(0).repeat(B, 1, 1)
    x_cam, y_cam = uv[:, :, 0], uv[:, :, 1]
    z_cam = torch.ones_like(x_cam)
    x_lift = (x_cam - cx.unsqueeze(-1) + cy.unsqueeze(-1) * skew.unsqueeze(-1) / fy.unsqueeze(-1)
              - skew.unsqueeze(-1) * y_cam / fy.unsqueeze(-1)) / fx.unsqueeze(-1) * z_cam
    y_lift = (y_cam - cy.unsqueeze(-1)) / fy.unsqueeze(-1) * z_cam
    cam_points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
    world = torch.bmm(cam2world, cam_points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    origins = cam2world[:, :3, 3]
    directions = torch.nn.functional.normalize(world - origins[:, None, :], dim=2)
    return origins.unsqueeze(1).repeat(1, directions.shape[1], 1), directions


def look_at_rays(size, distance, yaw, pitch, fov_degrees, centre):
    """Rays of one ``size`` x ``size`` camera ``distance`` from ``centre`` (a ``[3]`` tensor),
    turned by ``yaw`` about the y axis and ``pitch`` up from the horizon (radians), looking at the
    centre with y up and ``fov_degrees`` across the image: ``(origins [R, 3], unit directions
    [R, 3])``, R = size^2, top row first."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    centre = centre.detach()
    origin = centre + distance * torch.tensor([sy * cp, sp, cy * cp], dtype=centre.dtype, device=centre.device)
    cam2world = cam2world_looking_at(origin.unsqueeze(0), centre.unsqueeze(0))
    focal = 0.5 / math.tan(math.radians(fov_degrees) / 2)
    intrinsics = torch.tensor([[[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1]]], dtype=centre.dtype,
                              device=centre.device)
    origins, directions = camera_rays(cam2world, intrinsics, size)
    return origins[0], directions[0]


def ray_box_intersection(origins, directions, box_min, box_max):
    """Where rays ``[..., 3]`` are inside the axis-aligned box (slab test): ``(near, far)``,
    each ``[...]``, with ``near`` clamped at 0 (the origin) and ``far <= near`` for rays that miss."""
    t0, t1 = (box_min - origins) / directions, (box_max - origins) / directions
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far
