"""Geometry helpers the library shares: procedural meshes and surface samples (`meshes`),
EG3D's cameras, labels and rays (`cameras`). Plain PyTorch; no compiled kernels."""
from .cameras import (
    FFHQ_FOCAL,
    FFHQ_FOV_DEGREES,
    FFHQ_RADIUS,
    cam2world_looking_at,
    camera_labels,
    camera_rays,
    check_camera_labels,
    ffhq_intrinsics,
    fov_to_intrinsics,
    look_at_rays,
    orbit_cam2world,
    ray_box_intersection,
    split_labels,
)
from .meshes import head_mesh, jitter, posed_batch, surface_samples, training_points

__all__ = ["FFHQ_FOCAL", "FFHQ_FOV_DEGREES", "FFHQ_RADIUS", "cam2world_looking_at", "camera_labels", "camera_rays",
           "check_camera_labels",
           "ffhq_intrinsics", "fov_to_intrinsics", "head_mesh", "jitter", "look_at_rays", "orbit_cam2world",
           "posed_batch", "ray_box_intersection", "split_labels", "surface_samples", "training_points"]
