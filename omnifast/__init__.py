"""omnifast: fast kernels for geometry-guided 3D head synthesis (EG3D / OmniAvatar)."""
from . import (  # noqa: F401
    _C_loader,  # noqa: F401  (loads the operator library first)
    eg3d,
    reference,
)
from .ops import (
    ClosestPoint,
    CompositeResult,
    Correspondence,
    MeshBVH,
    MeshIndex,
    SharedPlanes,
    barycentric_interpolate,
    bias_act,
    closest_point,
    composite,
    correspondence,
    importance_sample,
    merge_samples,
    softplus,
    triplane_sample,
)

__version__ = "0.1.0"
__all__ = ["ClosestPoint", "CompositeResult", "Correspondence", "MeshBVH", "MeshIndex", "SharedPlanes",
           "barycentric_interpolate", "bias_act", "closest_point", "composite", "correspondence",
           "importance_sample", "merge_samples", "softplus", "triplane_sample", "info", "__version__"]


def info():
    """Version, torch, compiled backends and visible devices, as a dict."""
    import torch

    backends = _C_loader.compiled_backends()
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return {
        "omnifast": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "backends": ["cpu"] + ([f"cuda (sm {', '.join(backends['cuda_archs'])})"] if backends["cuda"] else [])
        + (["simt (the CUDA kernels on the CPU, for tests)"] if backends["simt"] else []),
        "devices": devices,
    }
