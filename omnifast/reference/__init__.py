"""Pure-PyTorch references: the definition of correct for the tests and the baseline for the
benchmarks. They parse their own arguments and import nothing from omnifast.ops, so a bug in
an operator's argument handling cannot hide in its reference too."""
from . import mesh
from .rendering import composite, merge_samples, sample_importance
from .triplane import triplane_sample, triplane_sample_gather

__all__ = ["mesh", "composite", "merge_samples", "sample_importance", "triplane_sample", "triplane_sample_gather"]
