"""Pure-PyTorch references: the definition of correct for tests, the baseline for benchmarks, and
a fallback (`backend="reference"`) for A/B checks in a model."""
from . import mesh
from .rendering import composite, merge_samples, sample_importance
from .triplane import triplane_sample, triplane_sample_gather

__all__ = ["mesh", "composite", "merge_samples", "sample_importance", "triplane_sample", "triplane_sample_gather"]
