"""Public operators: argument handling, autograd and fake (meta) registrations."""
from .composite import CompositeResult, composite, importance_sample, merge_samples
from .mesh import (
                   ClosestPoint,
                   Correspondence,
                   MeshBVH,
                   MeshIndex,
                   barycentric_interpolate,
                   closest_point,
                   correspondence,
)
from .triplane import SharedPlanes, triplane_sample

__all__ = ["ClosestPoint", "CompositeResult", "Correspondence", "MeshBVH", "MeshIndex", "SharedPlanes",
           "barycentric_interpolate", "closest_point", "composite", "correspondence",
           "importance_sample", "merge_samples", "triplane_sample"]
