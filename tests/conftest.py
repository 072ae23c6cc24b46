import hashlib

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


@pytest.fixture(autouse=True)
def seeded(request):
    """Fresh random inputs in every test, reproducible from the test's own name."""
    seed = int(hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8], 16)
    torch.manual_seed(seed)
    return seed


def poison_allocator(device, numel, dtype):
    """Leave NaN-filled blocks in the allocator, so an output the kernel fails to write shows up.

    Small blocks are recycled by both glibc and the CUDA caching allocator: a new tensor of
    about this size is likely to land on NaN-filled memory.
    """
    blocks = [torch.full((numel,), float("nan"), dtype=dtype, device=device) for _ in range(4)]
    del blocks
