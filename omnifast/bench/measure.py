"""Timing and peak-memory measurement on CPU and CUDA."""
import importlib
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    median_s: float
    min_s: float
    runs: int


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device):
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_calls(fns, device, *, warmup=1, runs=5, max_seconds=30.0):
    """Median wall time of each function, called in turn (a, b, a, b, ...).

    Interleaving makes a slow spell of a shared machine fall on every contender alike, so the
    ratios stay meaningful even when the absolute times drift.
    """
    device = torch.device(device)
    for fn in fns:
        for _ in range(warmup):
            fn()
    _sync(device)
    times = [[] for _ in fns]
    budget_end = time.perf_counter() + max_seconds
    for _ in range(runs):
        for fn, record in zip(fns, times):
            record.append(_time_once(fn, device))
        if time.perf_counter() > budget_end:
            break
    return [Timing(statistics.median(t), min(t), len(t)) for t in times]


def time_call(fn, device, *, warmup=1, runs=5, max_seconds=30.0):
    """Median wall time of fn() over `runs` calls after `warmup` calls (fewer if slow)."""
    return time_calls([fn], device, warmup=warmup, runs=runs, max_seconds=max_seconds)[0]


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def _release_freed_heap():
    """Hand memory freed earlier back to the OS, so it cannot hide new allocations from VmHWM."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def return_large_blocks(threshold=1 << 20):
    """Serve CPU allocations of ``threshold`` bytes or more from their own mappings, returned to
    the OS when freed (glibc's mallopt), so that the resident size follows the live tensors:
    by default glibc raises that threshold as blocks are freed and keeps later ones in its heap,
    where the resident high-water mark counts memory long freed. True where it took effect."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def measure_peak_bytes(fn, device):
    """Peak extra memory while fn() runs, over what was held before it.

    CUDA: the caching allocator's peak. CPU: the process's resident high-water mark, reset
    through /proc/self/clear_refs (Linux); None where that is unavailable.
    """
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        _release_freed_heap()
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
        before = _status_kib("VmRSS")
        fn()
        return max(0, _status_kib("VmHWM") - before) * 1024
    except OSError:
        return None


def measure_retained_bytes(fn, device):
    """Memory still held after fn() returns, while its result (an autograd graph, say) lives:
    what a training step keeps between forward and backward. None where unmeasurable."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        _sync(device)
        held = torch.cuda.memory_allocated(device) - before
        del result
        return held
    try:
        _release_freed_heap()
        before = _status_kib("VmRSS")
        result = fn()
        _release_freed_heap()
        held = max(0, _status_kib("VmRSS") - before) * 1024
        del result
        return held
    except OSError:
        return None


def import_optional(module):
    """(the module, None), or (None, why not) for a peer that is absent or cannot be imported."""
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # noqa: BLE001  (a missing system library is an ImportError too, or not)
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
