"""Public operators: argument handling, autograd and fake (meta) registrations."""
from .composite import CompositeResult, composite
from .triplane import triplane_sample

__all__ = ["CompositeResult", "composite", "triplane_sample"]
