"""GAN training of stage II (being built): the generator, super-resolution, the dual
discriminator, the losses, the training loop and its evaluation.

Layer: the top of the library, above the renderer (omnifast.render), the data (omnifast.data),
the semantic SDF and FLAME; only the command line and the demo sit above it. It imports nothing
from the command line or the benchmarks (tests/test_layers.py checks it)."""
