"""Datasets of stage II (being built): EG3D-style image folders and zips with camera and FLAME
labels, and the synthetic dataset maker.

Layer: above the renderer (omnifast.render), which renders the synthetic images, and the models
of the head; below the GAN. It imports nothing from omnifast.gan, the command line or the
benchmarks (tests/test_layers.py checks it)."""
