"""Public operators: argument handling, autograd and fake (meta) registrations."""
from .activation import bias_act, softplus
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
           "barycentric_interpolate", "bias_act", "closest_point", "composite", "correspondence",
           "importance_sample", "merge_samples", "softplus", "triplane_sample"]
