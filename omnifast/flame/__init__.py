"""FLAME: the loader (through smplx), parameter packing, hole caps, and the synthetic model."""
from .model import Flame, HoleCaps, ParamLayout, boundary_loops, read_model_file
from .synthetic import make_synthetic_flame

__all__ = ["Flame", "HoleCaps", "ParamLayout", "boundary_loops", "make_synthetic_flame", "read_model_file"]
