import contextlib
import hashlib
import warnings

import pytest
import torch

import omnifast

CUDA_READY = torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"]
CUDA_SKIP_REASON = (
    "no CUDA device visible" if not torch.cuda.is_available()
    else "this build of omnifast has no CUDA kernels")
SIMT_READY = omnifast._C_loader.compiled_backends()["simt"]
SIMT_SKIP_REASON = ("this build of omnifast is not the SIMT build "
                    "(OMNIFAST_SIMT=1 pip install --no-build-isolation -e .)")

# The CUDA kernels, on a GPU ("cuda") or run thread by thread on the CPU by the SIMT build
# ("simt": the test gets device "cpu", and omnifast's ops hand its CPU tensors to the CUDA
# launchers for the whole test).
KERNEL_DEVICES = [
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)]),
    pytest.param("simt", marks=[pytest.mark.simt,
                                pytest.mark.skipif(not SIMT_READY, reason=SIMT_SKIP_REASON)]),
]
DEVICES = ["cpu", *KERNEL_DEVICES]


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A "simt" test runs on CPU tensors with the CUDA kernels routed in."""
    if pyfuncitem.funcargs.get("device") != "simt":
        yield
        return
    pyfuncitem.funcargs["device"] = "cpu"
    with omnifast._C_loader.simt_kernels():
        yield


@contextlib.contextmanager
def cpu_twin():
    """The CPU loops, also inside a "simt" test (where the CUDA kernels take CPU tensors)."""
    if not SIMT_READY:
        yield
        return
    with omnifast._C_loader.simt_kernels(False):
        yield


def simt_active():
    """Inside a "simt" test: the CUDA kernels run on the CPU, thread by thread (keep sizes small)."""
    return SIMT_READY and omnifast._C_loader.C._simt_routing()


def reseed_scheduler(seed):
    """A new order for the blocks and threads of the SIMT build's kernels (nothing on a GPU)."""
    if simt_active():
        omnifast._C_loader.C._simt_seed(seed)


def twin_and_kernels(device):
    """[(torch device, context)] for the CPU twin and for the CUDA kernels on `device`."""
    return [("cpu", cpu_twin), (device, contextlib.nullcontext)]


@pytest.fixture(scope="session")
def flame_dir(tmp_path_factory):
    """A synthetic FLAME-format model folder, made once per test session."""
    from omnifast.flame import make_synthetic_flame

    path = tmp_path_factory.mktemp("flame")
    make_synthetic_flame(str(path))
    return str(path)


@pytest.fixture(autouse=True)
def seeded(request):
    """Fresh random inputs in every test, reproducible from the test's own name."""
    seed = int(hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8], 16)
    torch.manual_seed(seed)
    return seed


@contextlib.contextmanager
def poisoned_outputs():
    """Every tensor allocated uninitialised (at::empty) inside is NaN-filled by PyTorch itself
    (deterministic mode with fill_uninitialized_memory), so an output element that a kernel fails
    to write shows up as NaN. warn_only keeps CUDA's non-deterministic atomics usable."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]
