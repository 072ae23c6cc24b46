"""Datasets of stage II: EG3D-format image folders and zips with camera and FLAME labels
(`dataset`), and the synthetic training set rendered with omnifast's kernels (`synthetic`,
`make`).

Layer: above the renderer (omnifast.render) and the models of the head; below the GAN. It
imports nothing from omnifast.gan, the command line or the benchmarks (tests/test_layers.py
checks it)."""
from .dataset import ImageDataset
from .make import make_dataset
from .synthetic import CanonicalTexture, SceneDistribution, SyntheticHeads

__all__ = ["CanonicalTexture", "ImageDataset", "SceneDistribution", "SyntheticHeads", "make_dataset"]
