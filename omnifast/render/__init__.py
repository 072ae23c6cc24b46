"""The renderer of stage II (being built): cameras' rays to a feature image through the frozen
semantic SDF's warp, tri-grid sampling, the decoder and fused SDF-to-density compositing, with
`backend="omnifast" | "reference"`.

Layer: above the kernels and references (omnifast.ops, omnifast.reference), the geometry
helpers (omnifast.geometry) and the models of the head (omnifast.flame, omnifast.sdf); below the
data and the GAN. It imports nothing from omnifast.data, omnifast.gan, the command line or the
benchmarks (tests/test_layers.py checks it)."""
