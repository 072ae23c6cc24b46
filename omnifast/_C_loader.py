"""Loads the compiled kernels (the pybind11 module ``omnifast._C``, which registers the operator
library) and reads what it says of itself: its backends and the option values and layouts that
Python and C++ share."""
import importlib

import torch

try:
    C = importlib.import_module("omnifast._C")
except ImportError as exc:  # a clear error now beats an AttributeError on torch.ops later
    raise ImportError(
        "omnifast's compiled kernels (omnifast._C) are missing or do not match this torch "
        f"({torch.__version__}). Build them with `pip install --no-build-isolation -e .` "
        f"in the omnifast checkout. Original error: {exc}"
    ) from exc


def choices(enum):
    """``{name: int value}`` of one of ``omnifast._C``'s enums, in declaration order."""
    return {name: int(value) for name, value in enum.__members__.items()}


# Read once: torch.compile traces the checks below as constants.
_BACKENDS = {"cpu": True, "cuda": bool(C.WITH_CUDA),
             "cuda_archs": [a for a in C.CUDA_ARCHS.replace(" ", ";").split(";") if a]}


def compiled_backends():
    """{'cpu': True, 'cuda': bool, 'cuda_archs': [...]} for the loaded binary."""
    return {**_BACKENDS, "cuda_archs": list(_BACKENDS["cuda_archs"])}


def require_backend(op, *tensors):
    """Raise a clear error for a CUDA tensor when this build has no CUDA kernels."""
    if any(t.is_cuda for t in tensors) and not _BACKENDS["cuda"]:
        raise RuntimeError(
            f"omnifast.{op}: got CUDA tensors, but this build of omnifast has no CUDA kernels; "
            "reinstall with a CUDA torch and nvcc (OMNIFAST_CUDA=1)"
        )
