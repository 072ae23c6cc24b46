"""Geometry helpers the library shares: procedural meshes and surface samples (`meshes`),
cameras and rays (`cameras`). Plain PyTorch; no compiled kernels."""
from .cameras import look_at_rays, ray_box_intersection
from .meshes import head_mesh, jitter, posed_batch, surface_samples, training_points

__all__ = ["head_mesh", "jitter", "look_at_rays", "posed_batch", "ray_box_intersection", "surface_samples",
           "training_points"]
