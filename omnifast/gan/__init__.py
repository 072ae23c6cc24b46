"""GAN training of stage II: StyleGAN2's networks in plain PyTorch, with EG3D's names
(`networks`), OmniAvatar's generator and dual discriminator (`models`), EG3D's
``TriPlaneGenerator`` on omnifast's kernels (`triplane`) and OmniAvatar's released generator
(`omniavatar`), released EG3D and OmniAvatar pickles read without running their code
(`pickles`), the losses (`loss`) and the training loop with its run folder and EG3D's gradient
exchange across processes (`train`).

Layer: the top of the library, above the renderer (omnifast.render), the data (omnifast.data),
the semantic SDF and FLAME; only the command line and the demo sit above it. It imports nothing
from the command line or the benchmarks (tests/test_layers.py checks it)."""
from .models import DualDiscriminator, Generator, GeneratorConfig
from .omniavatar import OmniAvatarGenerator
from .pickles import load_network_pkl
from .train import GANConfig, GANRun, load_gan_run, train_gan
from .triplane import TriPlaneGenerator

__all__ = ["DualDiscriminator", "GANConfig", "GANRun", "Generator", "GeneratorConfig", "OmniAvatarGenerator",
           "TriPlaneGenerator", "load_gan_run", "load_network_pkl", "train_gan"]
