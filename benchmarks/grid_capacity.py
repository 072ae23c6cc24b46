"""What a tri-grid of a given resolution can show: one image of a dataset fitted directly.

The tri-grid is made a free tensor (no backbone, no GAN), and it, the decoder, the background
and the super-resolution are fitted by L1 to one image and its raw resize (the geometry prior
held as in training), for a fixed number of steps. A resolution too coarse for a feature (the
tiny preset's eyes) cannot show it however long the fit: the tiny preset's tri-grid resolution
comes from this.

    python benchmarks/grid_capacity.py --data omnifast-demo/data --sdf-run omnifast-demo/sdf-run \
        --resolutions 32 128 --steps 300 --out grid_capacity.png
"""
import argparse

import torch
import torch.nn.functional as F

from omnifast.gan import loss as L
from omnifast.gan.models import GeneratorConfig
from omnifast.gan.networks import fused_activations
from omnifast.gan.train import PRESETS, GANConfig, GANRun, write_png
from omnifast.sdf.commands import at_least, positive_float


def fit(data, sdf_run, resolution, steps, lr, index):
    preset = PRESETS["tiny"]
    config = GANConfig.with_preset("tiny", dataset=data, sdf_run=sdf_run,
                                   generator={**preset["generator"], "grid_resolution": resolution})
    run = GANRun(config)
    G = run.G
    if index >= len(run.dataset):
        raise SystemExit(f"--index must be below the dataset's {len(run.dataset)} images, got {index}")
    image, label = run.dataset[index]
    real = image[None].float() / 127.5 - 1
    real_raw = L.resize(real, config.nrr_initial)  # the training's raw target
    c = label[None]
    z = torch.randn(1, G.config.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        grid = torch.nn.Parameter(G.planes(G.mapping(z, c)).clone())
    G.planes = lambda ws, noise_mode="random": grid
    trained = [grid, *G.decoder.parameters(), *G.superresolution.parameters(), *G.background.parameters()]
    opt = torch.optim.Adam(trained, lr=lr, betas=(0.0, 0.99))
    with fused_activations(True):
        for _ in range(steps):
            out = G(z, c, neural_rendering_resolution=config.nrr_initial)
            l1 = (out["image"] - real).abs().mean() + (out["image_raw"] - real_raw).abs().mean()
            prior = L.geometry_prior(out["delta"], out["prior_sdf"], config.geometry_sigma)
            opt.zero_grad(set_to_none=True)
            (l1 + config.geometry_prior * prior).backward()
            opt.step()
        with torch.no_grad():
            torch.manual_seed(0)
            out = G(z, c, neural_rendering_resolution=config.nrr_initial)
    raw = F.interpolate(out["image_raw"], size=real.shape[-1], mode="nearest")
    print(f"grid {resolution}^2: L1 {(out['image'] - real).abs().mean().item():.4f} (image), "
          f"{(out['image_raw'] - real_raw).abs().mean().item():.4f} (raw) after {steps} steps", flush=True)
    return [out["image"][0], raw[0]], real[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--sdf-run", required=True)
    parser.add_argument("--resolutions", type=at_least(4), nargs="+", default=[32, 128],
                        help="tri-grid resolutions (powers of two)")
    parser.add_argument("--steps", type=at_least(1), default=300)
    parser.add_argument("--lr", type=positive_float, default=0.03)
    parser.add_argument("--index", type=at_least(0), default=0, help="which image of the dataset")
    parser.add_argument("--out", required=True, help="PNG: per resolution the image and the raw image, then the data")
    args = parser.parse_args()
    for resolution in args.resolutions:  # all checked before the first fit
        try:
            GeneratorConfig(**{**PRESETS["tiny"]["generator"], "grid_resolution": resolution})
        except ValueError as error:
            parser.error(f"--resolutions: {error}")
    tiles = []
    for resolution in args.resolutions:
        try:
            fitted, real = fit(args.data, args.sdf_run, resolution, args.steps, args.lr, args.index)
        except (OSError, ValueError) as error:  # RunError is a ValueError: a missing or mismatched folder
            raise SystemExit(f"grid_capacity.py: {error}") from None
        tiles += fitted
    row = torch.cat([*tiles, real], -1)
    write_png(args.out, ((row.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())


if __name__ == "__main__":
    main()
