"""Public operators: argument handling, autograd and fake (meta) registrations."""
from .triplane import triplane_sample

__all__ = ["triplane_sample"]
