"""Loads the compiled kernels (the pybind11 module ``omnifast._C``, which registers the operator
library) and reads what it says of itself: its backends and the option values and layouts that
Python and C++ share."""
import contextlib
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
_BACKENDS = {"cpu": True, "cuda": bool(C.WITH_CUDA), "simt": bool(C.WITH_SIMT),
             "cuda_archs": [a for a in C.CUDA_ARCHS.replace(" ", ";").split(";") if a]}


def compiled_backends():
    """{'cpu': True, 'cuda': bool, 'simt': bool, 'cuda_archs': [...]} for the loaded binary.
    'simt': the SIMT build (OMNIFAST_SIMT=1), whose CUDA kernels run on the CPU."""
    return {**_BACKENDS, "cuda_archs": list(_BACKENDS["cuda_archs"])}


def require_backend(op, *tensors):
    """Raise a clear error for a CUDA tensor when this build has no CUDA kernels."""
    if any(t.is_cuda for t in tensors) and not _BACKENDS["cuda"]:
        raise RuntimeError(
            f"omnifast.{op}: got CUDA tensors, but this build of omnifast has no CUDA kernels; "
            "reinstall with a CUDA torch and nvcc (OMNIFAST_CUDA=1)"
        )


def runs_cuda_kernels(tensor):
    """Whether omnifast's ops run their CUDA kernels for ``tensor``: a CUDA tensor, or a CPU
    tensor inside :func:`simt_kernels` (SIMT build)."""
    if tensor.is_cuda:
        return True
    return _BACKENDS["simt"] and tensor.device.type == "cpu" and C._simt_routing()


@contextlib.contextmanager
def simt_kernels(enabled=True, seed=None):
    """Inside, omnifast's ops hand CPU tensors to the CUDA kernels, which the SIMT build runs on
    the CPU thread by thread (host memory standing in for device memory); ``enabled=False`` runs
    the CPU loops again. ``seed`` reseeds the order blocks and threads are scheduled in."""
    if not _BACKENDS["simt"]:
        raise RuntimeError("omnifast.simt_kernels: this build of omnifast is not the SIMT build; "
                           "reinstall with OMNIFAST_SIMT=1 pip install --no-build-isolation -e .")
    if seed is not None:
        C._simt_seed(int(seed))
    previous = C._simt_route(bool(enabled))
    try:
        yield
    finally:
        C._simt_route(previous)


def simt_stats():
    """What the SIMT build's kernels did so far: launches, blocks, threads, barriers, shuffles,
    atomics and vector (float4) atomics."""
    if not _BACKENDS["simt"]:
        raise RuntimeError("omnifast.simt_stats: this build of omnifast is not the SIMT build")
    return dict(C._simt_stats())
