"""Benchmark cases and measurement, shared by `omnifast bench` and benchmarks/ (pytest-benchmark)."""
from .measure import Timing, measure_peak_bytes, time_call, time_calls
from .triplane import TRIPLANE_PASSES, triplane_cases, triplane_runner

__all__ = ["Timing", "measure_peak_bytes", "time_call", "time_calls", "TRIPLANE_PASSES", "triplane_cases",
           "triplane_runner"]
