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


class PeakMeter:
    """Peak memory over a baseline, read at any point and restarted without a new baseline.

    CUDA: the caching allocator's peak. CPU: the process's resident high-water mark, reset
    through /proc/self/clear_refs (Linux); None where that is unavailable.
    """

    def __init__(self, device):
        self.device, self.base = torch.device(device), None

    def start(self):
        """The memory held now becomes the baseline; a new peak starts."""
        if self.device.type == "cuda":
            _sync(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _release_freed_heap()
            try:
                self.base = _status_kib("VmRSS") * 1024
            except OSError:
                self.base = None
        self.restart()

    def restart(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.base is not None:
            try:
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")  # resets VmHWM to the current resident size
            except OSError:
                self.base = None

    def peak(self):
        """Bytes over the baseline at the highest point since the last start or restart."""
        if self.device.type == "cuda":
            _sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if self.base is None:
            return None
        return max(0, _status_kib("VmHWM") * 1024 - self.base)


def measure_peak_bytes(fn, device):
    """Peak extra memory while fn() runs, over what was held before it (:class:`PeakMeter`)."""
    meter = PeakMeter(device)
    meter.start()
    fn()
    return meter.peak()


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
