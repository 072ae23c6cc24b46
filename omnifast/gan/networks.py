"""StyleGAN2's networks in plain PyTorch (no custom CUDA plugins): the mapping network, the
modulated-convolution synthesis network that emits the tri-grid, EG3D's super-resolution blocks
and StyleGAN2's residual discriminator blocks. As in StyleGAN2, resampling convolutions work at
the lower resolution: up, a transposed convolution (stride 2) and the [1, 3, 3, 1] blur; down,
a 2 x 2 average then the convolution. Image branches upsample bilinearly (that same filter)."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..render.decoder import FullyConnected

LRELU_GAIN = math.sqrt(2)


class _LeakyReLUGain(torch.autograd.Function):
    """``leaky_relu(x, 0.2) * sqrt 2`` keeping only its output for the backward (as StyleGAN2's
    bias_act does): the input, usually a sum nothing else needs, is freed at once. Its
    backward is made of differentiable operations, so R1's double backward runs through it."""

    @staticmethod
    def forward(ctx, x):
        y = F.leaky_relu(x, 0.2) * LRELU_GAIN
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        # where() keeps only the boolean mask for R1's double backward, not a float slope per element
        return torch.where(y > 0, grad * LRELU_GAIN, grad * (0.2 * LRELU_GAIN))


def lrelu(x):
    return _LeakyReLUGain.apply(x)


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


def up2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def down2(x):
    return F.avg_pool2d(x, 2)


def _blur_kernel():
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return (taps[:, None] * taps[None, :]) / taps.sum() ** 2 * 4  # gain 4: the zeros a stride-2 transpose inserts


class _Blur(torch.autograd.Function):
    """The [1, 3, 3, 1] blur of each channel (``padding`` on every side). Linear with a constant
    kernel, so its backward is the transposed blur and nothing is kept for it (a convolution
    would keep its input, a full-resolution tensor per upsampling layer)."""

    @staticmethod
    def forward(ctx, x, padding):
        ctx.padding, ctx.channels = padding, x.shape[1]
        return F.conv2d(x, _blur_kernel().to(x).expand(x.shape[1], 1, 4, 4), padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        kernel = _blur_kernel().to(grad).expand(ctx.channels, 1, 4, 4)
        return F.conv_transpose2d(grad, kernel, padding=ctx.padding, groups=ctx.channels), None


def conv_up2(x, weight, groups=1):
    """StyleGAN2's upsampling convolution: ``weight [out, in / groups, k, k]`` as a transposed
    convolution of stride 2 (the cost of a convolution at the input's resolution), then the
    [1, 3, 3, 1] blur; twice the input's size."""
    out, k = weight.shape[0] // groups, weight.shape[-1]
    transposed = weight.reshape(groups, out, -1, k, k).transpose(1, 2).reshape(-1, out, k, k)
    x = F.conv_transpose2d(x, transposed, stride=2, groups=groups)  # [N, out * groups, 2H + k - 2, ...]
    return _Blur.apply(x, (5 - k) // 2)  # (2H + k - 2) + 2 pad - 3 = 2H


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
    """StyleGAN2's modulated convolution with weight demodulation, the styles folded into each
    sample's weights (a grouped convolution over the batch): the same result as scaling the
    activations, with nothing but the input kept for the backward."""

    def __init__(self, in_channels, out_channels, w_dim, kernel=3, demodulate=True, up=False):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.demodulate, self.up, self.padding = demodulate, up, kernel // 2
        self.gain = 1 / math.sqrt(in_channels * kernel * kernel)

    def forward(self, x, w):
        styles = self.affine(w)
        if not self.demodulate:
            styles = styles * self.gain
        n, (out, channels, k, _) = x.shape[0], self.weight.shape
        weight = self.weight[None] * styles[:, None, :, None, None]  # [N, out, in, k, k]
        if self.demodulate:
            weight = weight * (weight.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
        weight = weight.reshape(n * out, channels, k, k).to(x.dtype)
        x = x.reshape(1, n * channels, *x.shape[2:])
        if self.up:
            x = conv_up2(x, weight, groups=n)
        else:
            x = F.conv2d(x, weight, padding=self.padding, groups=n)
        return x.reshape(n, out, *x.shape[2:])


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
    during training, then one synthesis block per doubling (2x, 4x or 8x), all on the last w.
    With ``autocast`` the blocks run in bfloat16 (EG3D runs them in fp16), the image returns
    in float32."""
    autocast = False

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
        with torch.autocast(rgb.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            for block in self.blocks:
                x, img = block(x, img, w, noise_mode)
        return img.float()


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
        y = self.skip(down2(x))  # both at half resolution, as StyleGAN2 downsamples before convolving
        x = lrelu(self.conv0(x))
        x = lrelu(self.conv1(down2(x)))
        return (x + y) * math.sqrt(0.5)
