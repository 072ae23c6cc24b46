"""Loads the compiled operator library and says what it carries."""
import importlib

import torch

try:
    importlib.import_module("omnifast._C")
except ImportError as exc:  # a clear error now beats an AttributeError on torch.ops later
    raise ImportError(
        "omnifast's compiled kernels (omnifast._C) are missing or do not match this torch "
        f"({torch.__version__}). Build them with `pip install --no-build-isolation -e .` "
        f"in the omnifast checkout. Original error: {exc}"
    ) from exc


def _read_backends():
    info = torch.ops.omnifast.build_info()
    backends = {"cpu": True, "cuda": False, "cuda_archs": []}
    for part in info.split(","):
        if part.startswith("cuda:"):
            backends["cuda"] = True
            backends["cuda_archs"] = [a for a in part[len("cuda:"):].replace(" ", ";").split(";") if a]
    return backends


_BACKENDS = _read_backends()  # read once: torch.compile traces the checks below as constants


def compiled_backends():
    """{'cpu': True, 'cuda': bool, 'cuda_archs': [...]} for the loaded binary."""
    return dict(_BACKENDS)


def require_backend(op, *tensors):
    """Raise a clear error for a CUDA tensor when this build has no CUDA kernels."""
    if any(t.is_cuda for t in tensors) and not _BACKENDS["cuda"]:
        raise RuntimeError(
            f"omnifast.{op}: got CUDA tensors, but this build of omnifast has no CUDA kernels; "
            "reinstall with a CUDA torch and nvcc (OMNIFAST_CUDA=1)"
        )
