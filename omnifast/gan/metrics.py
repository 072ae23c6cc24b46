"""Image quality: FID and KID on the features of a user-provided Inception network (the standard
weights cannot be downloaded here), and a cheap proxy that needs no weights, logged during
training: the Frechet distance on the features of a fixed random convolutional network."""
import pickle

import torch
import torch.nn.functional as F


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to features ``a [N, D]`` and ``b [M, D]``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, the trace of the root through the
    symmetric ``S_a^(1/2) S_b S_a^(1/2)`` (float64 eigendecompositions)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    values, vectors = torch.linalg.eigh(s_a)
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * cross)


def kernel_inception_distance(a, b, subsets=100, subset_size=1000, seed=0):
    """KID as StyleGAN3 computes it: the unbiased MMD^2 with the cubic polynomial kernel
    ``(x.y / D + 1)^3``, averaged over random subsets of ``min(N, M, subset_size)`` features."""
    a, b = a.double(), b.double()
    n, d = min(len(a), len(b), subset_size), a.shape[1]
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:n]]
        y = b[torch.randperm(len(b), generator=g)[:n]]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3), ((y @ y.T / d + 1) ** 3), ((x @ y.T / d + 1) ** 3)
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (n - 1)
        total += float(within - kxy.sum() * 2 / n)
    return total / subsets / n


class InceptionFeatures:
    """The 2048 pool features of a TorchScript Inception network from a file the user provides:
    StyleGAN2-ADA's ``inception-2015-12-05.pt`` (``torch.jit.load``) or StyleGAN3's ``.pkl`` of
    the same module. It is called as those detectors are: uint8 images ``[N, 3, H, W]`` (it
    resizes to 299 itself) and ``return_features=True``."""

    def __init__(self, path, device="cpu"):
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(path, map_location=self.device)
        except (RuntimeError, ValueError):
            try:
                with open(path, "rb") as f:
                    self.model = pickle.load(f).to(self.device)  # noqa: S301 (the user's own file)
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
                raise ValueError(f"--inception: {path} is neither a TorchScript file nor a pickled TorchScript "
                                 f"module ({error})") from None
        except FileNotFoundError:
            raise FileNotFoundError(f"--inception: {path} not found") from None
        self.model.eval()

    @torch.no_grad()
    def __call__(self, images):
        """``uint8 [N, 3, H, W]`` -> ``float64 [N, D]``."""
        return self.model(images.to(self.device), return_features=True).double().cpu()


class RandomFeatures(torch.nn.Module):
    """A fixed random convolutional network (seeded; no weights to download): four strided
    convolutions with leaky ReLUs, pooled to 256 numbers. The Frechet distance on its features
    tracks whether generated images drift towards the real ones during training; it is a proxy,
    not comparable with FID."""

    def __init__(self, seed=0, width=64, out=256):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        widths = [3, width, width * 2, width * 4, out]
        self.weights = [torch.randn(o, i, 4, 4, generator=g) / (i * 16) ** 0.5 for i, o in zip(widths, widths[1:])]

    @torch.no_grad()
    def forward(self, images):
        """Images in [-1, 1] ``[N, 3, H, W]`` (resized to 64^2) -> ``float64 [N, out]``."""
        x = F.interpolate(images.float(), size=(64, 64), mode="area")
        for w in self.weights:
            x = F.leaky_relu(F.conv2d(x, w.to(x.device), stride=2, padding=1), 0.2)
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1).double().cpu()
