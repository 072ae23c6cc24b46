"""GAN training of stage II: StyleGAN2's networks in plain PyTorch (`networks`), OmniAvatar's
generator and dual discriminator (`models`), the losses (`loss`) and the training loop with its
run folder and DistributedDataParallel (`train`).

Layer: the top of the library, above the renderer (omnifast.render), the data (omnifast.data),
the semantic SDF and FLAME; only the command line and the demo sit above it. It imports nothing
from the command line or the benchmarks (tests/test_layers.py checks it)."""
from .models import DualDiscriminator, Generator, GeneratorConfig
from .train import GANConfig, GANRun, load_gan_run, train_gan

__all__ = ["DualDiscriminator", "GANConfig", "GANRun", "Generator", "GeneratorConfig", "load_gan_run", "train_gan"]
