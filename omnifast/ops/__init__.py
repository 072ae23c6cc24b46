"""Public operators: argument handling, autograd and fake (meta) registrations."""
from .composite import CompositeResult, composite, importance_sample, merge_samples
from .triplane import triplane_sample

__all__ = ["CompositeResult", "composite", "importance_sample", "merge_samples", "triplane_sample"]
