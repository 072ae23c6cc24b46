"""StyleGAN2's networks in plain PyTorch (no custom CUDA plugins): the mapping network, the
modulated-convolution synthesis network that emits the tri-grid, EG3D's super-resolution blocks
and StyleGAN2's residual discriminator blocks. Upsampling is bilinear (the [1, 3, 3, 1] filter
StyleGAN2's upfirdn2d applies), downsampling its average-pool twin."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..render.decoder import FullyConnected

LRELU_GAIN = math.sqrt(2)


def lrelu(x):
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


def up2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def down2(x):
    return F.avg_pool2d(x, 2)


class MappingNetwork(nn.Module):
    """z (and an embedded condition c) -> ``num_ws`` copies of w; tracks the average w for
    truncation. EG3D: 2 layers, lr multiplier 0.01."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, layers=2, lr_mul=0.01, w_avg_beta=0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        self.embed = FullyConnected(c_dim, w_dim) if c_dim else None
        widths = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * layers  # z_dim 0: the condition only
        self.fcs = nn.ModuleList(FullyConnected(a, b, lr_mul) for a, b in zip(widths[:-1], widths[1:]))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, c, truncation_psi=1.0, update_w_avg=False):
        parts = [normalize_2nd_moment(z)] if self.z_dim else []
        if self.c_dim:
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, 1)
        for fc in self.fcs:
            x = lrelu(fc(x))
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated convolution (weight demodulation), the per-sample styles applied to
    the activations rather than the weights (as StyleGAN2 trains)."""

    def __init__(self, in_channels, out_channels, w_dim, kernel=3, demodulate=True, up=False):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.demodulate, self.up, self.padding = demodulate, up, kernel // 2
        self.gain = 1 / math.sqrt(in_channels * kernel * kernel)

    def forward(self, x, w):
        styles = self.affine(w)
        weight = self.weight
        if not self.demodulate:
            styles = styles * self.gain
        x = x * styles[:, :, None, None].to(x.dtype)
        if self.up:
            x = up2(x)
        x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            d = ((weight[None] * styles[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8).rsqrt()
            x = x * d[:, :, None, None].to(x.dtype)
        return x


class SynthesisLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, up=False):
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, w_dim, up=up)
        self.resolution = resolution
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x, w, noise_mode="random"):
        x = self.conv(x, w)
        if noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype) * self.noise_strength
        return lrelu(x + self.conv.bias.to(x.dtype)[None, :, None, None])


class ToImage(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim):
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, w_dim, kernel=1, demodulate=False)

    def forward(self, x, w):
        return self.conv(x, w) + self.conv.bias.to(x.dtype)[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution of StyleGAN2's skip generator: (constant or upsampled input), two
    modulated convolutions, and the image branch."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels):
        super().__init__()
        self.resolution, self.in_channels = resolution, in_channels
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.to_image = ToImage(out_channels, img_channels, w_dim)
        self.num_ws = (1 if in_channels == 0 else 2) + 1

    def forward(self, x, img, ws, noise_mode="random"):
        i = 0
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            i = 1
        x = self.conv1(x, ws[:, i], noise_mode)
        y = self.to_image(x, ws[:, i + 1])
        img = y if img is None else up2(img) + y
        return x, img


def channels_at(resolution, channel_base, channel_max):
    return min(channel_base // resolution, channel_max)


class SynthesisNetwork(nn.Module):
    """StyleGAN2's synthesis network from 4^2 to ``resolution``^2 with ``img_channels`` outputs
    (the tri-grid's 96 * D channels in EG3D/OmniAvatar)."""

    def __init__(self, w_dim, resolution, img_channels, channel_base=32768, channel_max=512):
        super().__init__()
        self.resolutions = [2 ** i for i in range(2, int(np.log2(resolution)) + 1)]
        self.blocks = nn.ModuleList()
        previous = 0
        for r in self.resolutions:
            out = channels_at(r, channel_base, channel_max)
            self.blocks.append(SynthesisBlock(previous, out, w_dim, r, img_channels))
            previous = out
        # Consecutive blocks share a w: a block's image branch and the next block's first layer.
        self.num_ws = sum(b.num_ws for b in self.blocks) - (len(self.blocks) - 1)

    def forward(self, ws, noise_mode="random"):
        x = img = None
        i = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, i:i + block.num_ws], noise_mode)
            i += block.num_ws - 1
        return img


class SuperResolution(nn.Module):
    """EG3D's super-resolution: the raw feature image (and its RGB, the image branch's start)
    resized to the module's input resolution, so the neural rendering resolution may change
    during training, then one synthesis block per doubling (2x, 4x or 8x), all on the last w."""

    def __init__(self, channels, input_resolution, output_resolution, w_dim, img_channels=3, channel_base=32768,
                 channel_max=512):
        super().__init__()
        factor = output_resolution // input_resolution
        if factor not in (2, 4, 8) or factor * input_resolution != output_resolution:
            raise ValueError(f"SuperResolution: the output must be 2, 4 or 8 times the neural rendering "
                             f"resolution, got {input_resolution} -> {output_resolution}")
        self.input_resolution, self.output_resolution = input_resolution, output_resolution
        self.blocks = nn.ModuleList()
        previous, r = channels, input_resolution * 2
        while r <= output_resolution:
            out = channels_at(r, channel_base, channel_max)
            self.blocks.append(SynthesisBlock(previous, out, w_dim, r, img_channels))
            previous, r = out, r * 2

    def forward(self, rgb, features, ws, noise_mode="random"):
        size = (self.input_resolution, self.input_resolution)
        resize = lambda t: t if t.shape[-1] == size[0] else F.interpolate(  # noqa: E731
            t, size=size, mode="bilinear", align_corners=False, antialias=True)
        x, img = resize(features), resize(rgb)
        w = ws[:, -1:].expand(-1, 3, -1)
        for block in self.blocks:
            x, img = block(x, img, w, noise_mode)
        return img


class DiscriminatorBlock(nn.Module):
    """StyleGAN2's residual discriminator block (2x down)."""

    def __init__(self, in_channels, out_channels, img_channels=0):
        super().__init__()
        self.from_image = nn.Conv2d(img_channels, in_channels, 1) if img_channels else None
        self.conv0 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x, img=None):
        if self.from_image is not None:
            x = lrelu(self.from_image(img))
        y = down2(self.skip(x))
        x = lrelu(self.conv0(x))
        x = lrelu(down2(self.conv1(x)))
        return (x + y) * math.sqrt(0.5)
