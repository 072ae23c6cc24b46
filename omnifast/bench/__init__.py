"""Benchmark cases and measurement, shared by `omnifast bench` and benchmarks/ (pytest-benchmark)."""
from .composite import COMPOSITE_PASSES, composite_cases, composite_runner
from .measure import Timing, measure_peak_bytes, measure_retained_bytes, time_call, time_calls
from .triplane import TRIPLANE_PASSES, triplane_cases, triplane_runner

__all__ = ["COMPOSITE_PASSES", "composite_cases", "composite_runner", "Timing", "measure_peak_bytes",
           "measure_retained_bytes", "time_call", "time_calls", "TRIPLANE_PASSES", "triplane_cases",
           "triplane_runner"]
