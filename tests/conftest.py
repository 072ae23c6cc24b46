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

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)]),
]


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
