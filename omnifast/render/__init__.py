"""The renderer of stage II: camera labels to a feature image through the frozen semantic SDF's
warp (or the FLAME mesh's), tri-grid sampling, OmniAvatar's decoder and fused SDF-to-density
compositing, with ``backend="omnifast" | "reference"``.

Layer: above the kernels and references (omnifast.ops, omnifast.reference), the geometry
helpers (omnifast.geometry) and the models of the head (omnifast.flame, omnifast.sdf); below the
data and the GAN. It imports nothing from omnifast.data, omnifast.gan, the command line or the
benchmarks (tests/test_layers.py checks it)."""
from .backends import BACKENDS
from .decoder import FullyConnected, OSGDecoder
from .renderer import RenderConfig, Renderer, RenderOutput
from .warp import MeshWarp, SDFWarp, Warp, load_warp, world_scale_for

__all__ = ["BACKENDS", "FullyConnected", "MeshWarp", "OSGDecoder", "RenderConfig", "RenderOutput", "Renderer",
           "SDFWarp", "Warp", "load_warp", "world_scale_for"]
