"""StyleGAN2's networks as EG3D defines them, in plain PyTorch (no custom CUDA plugins): the
mapping network, the modulated-convolution synthesis network that emits the tri-grid, EG3D's
super-resolution blocks, and the residual discriminator (blocks, minibatch standard deviation,
epilogue) with equalised learning rate: weights drawn from N(0, 1) and scaled at run time by
``1 / sqrt(fan_in)`` (times the learning-rate multiplier), EG3D's bias inits, ``conv_clamp``,
and the [1, 3, 3, 1] filter for every resampling with EG3D's padding. Module and parameter names
are EG3D's (``fc0``, ``embed``, ``b64.conv1``, ``b4.out``, ...), so state dicts line up.
Resampling convolutions work at the lower resolution: up, a transposed convolution (stride 2)
then the filter; down, the filter then a convolution of stride 2."""
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


class _Blur(torch.autograd.Function):
    """The [1, 3, 3, 1] filter of each channel times ``gain`` (``padding`` on every side). Linear
    with a constant kernel, so its backward is the transposed filter and nothing is kept for it
    (a convolution would keep its input, a full-resolution tensor per resampling layer)."""

    @staticmethod
    def forward(ctx, x, padding, gain):
        ctx.padding, ctx.channels, ctx.gain = padding, x.shape[1], gain
        kernel = (setup_filter() * gain).to(x).expand(x.shape[1], 1, 4, 4)
        return F.conv2d(x, kernel, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        kernel = (setup_filter() * ctx.gain).to(grad).expand(ctx.channels, 1, 4, 4)
        return F.conv_transpose2d(grad, kernel, padding=ctx.padding, groups=ctx.channels), None, None


def conv_up2(x, weight, groups=1):
    """StyleGAN2's upsampling convolution: ``weight [out, in / groups, k, k]`` as a transposed
    convolution of stride 2 (the cost of a convolution at the input's resolution), then the
    [1, 3, 3, 1] blur; twice the input's size."""
    out, k = weight.shape[0] // groups, weight.shape[-1]
    transposed = weight.reshape(groups, out, -1, k, k).transpose(1, 2).reshape(-1, out, k, k)
    x = F.conv_transpose2d(x, transposed, stride=2, groups=groups)  # [N, out * groups, 2H + k - 2, ...]
    return _Blur.apply(x, (5 - k) // 2, 4.0)  # (2H + k - 2) + 2 pad - 3 = 2H; gain 4: the zeros inserted


class MappingNetwork(nn.Module):
    """EG3D's mapping: z (and the condition c through ``embed``, both normalised) through
    ``fc0 ... fc{layers - 1}`` (leaky ReLU, learning rate times ``lr_mul``) -> ``num_ws``
    copies of w, tracking the average w for truncation (``truncation_cutoff``: only the first
    ws). G's has 2 layers; the dual discriminator's maps the label alone through 8 layers to its
    projection (``num_ws`` None: one vector, no average)."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, layers=2, lr_mul=0.01, w_avg_beta=0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, layers
        self.w_avg_beta = w_avg_beta if num_ws is not None else None
        if c_dim:
            self.embed = FullyConnected(c_dim, w_dim)
        widths = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * layers  # z_dim 0: the condition only
        for i in range(layers):
            setattr(self, f"fc{i}", FullyConnected(widths[i], widths[i + 1], lr_mul))
        if self.w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, c, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False):
        parts = [normalize_2nd_moment(z)] if self.z_dim else []
        if self.c_dim:
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, 1)
        for i in range(self.num_layers):
            x = lrelu(getattr(self, f"fc{i}")(x))
        if update_w_avg and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cutoff], truncation_psi), x[:, cutoff:]], 1)
        return x


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


def filter_down(x, padding):
    """The [1, 3, 3, 1] filter with ``padding`` on each side (EG3D's ``upfirdn2d`` before a
    stride-2 layer)."""
    return _Blur.apply(x, padding, 1.0)


def bias_act(x, bias=None, gain=1.0, clamp=None, activation="lrelu"):
    """EG3D's ``bias_act``: add the bias, leaky ReLU (0.2) times sqrt 2, times ``gain``, clamped
    to +-``clamp`` (``conv_clamp`` times the gain)."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))
    if activation == "lrelu":
        x = lrelu(x)
    if gain != 1:
        x = x * gain
    return x if clamp is None else x.clamp(-clamp, clamp)


class Conv2dLayer(nn.Module):
    """EG3D's ``Conv2dLayer`` (``up`` 1, ``down`` 1 or 2): weight ``[out, in, k, k]`` from
    N(0, 1) used times ``1 / sqrt(in k^2)``, zero bias (or none), leaky ReLU, ``conv_clamp``."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="lrelu", down=1,
                 conv_clamp=None):
        super().__init__()
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x, gain=1.0):
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.down == 1:
            x = F.conv2d(x, w, padding=self.padding)
        elif w.shape[-1] == 1:  # filter, drop every other pixel, then the 1 x 1 convolution
            x = F.conv2d(filter_down(x, 1)[:, :, ::2, ::2], w)
        else:  # filter (padding k // 2 + 1), then the stride-2 convolution
            x = F.conv2d(filter_down(x, self.padding + 1), w, stride=2)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, gain, clamp, self.activation)


def setup_filter():
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = taps[:, None] * taps[None, :]
    return kernel / kernel.sum()


class DiscriminatorBlock(nn.Module):
    """EG3D's residual discriminator block at ``resolution`` (to half of it): ``fromrgb`` (the
    first block), ``conv0`` (3 x 3), ``conv1`` (3 x 3, down 2) and ``skip`` (1 x 1, down 2, no
    bias), the two branches summed with gain sqrt(0.5) each."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, conv_clamp=None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, activation="linear")

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    """EG3D's minibatch standard deviation: per group of ``group_size`` images (the batch when
    it is smaller), the standard deviation over the group averaged over channels and pixels, as
    one more channel."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(f"minibatch std: the batch ({n}) must be a multiple of the group size ({g})")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean([2, 3, 4])
        return torch.cat([x, y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)], 1)


class DiscriminatorEpilogue(nn.Module):
    """EG3D's ``b4``: minibatch standard deviation, ``conv`` (3 x 3), ``fc``, ``out`` to the
    label's projection space (``cmap_dim``), and the projection onto the mapped label."""

    def __init__(self, in_channels, cmap_dim, resolution=4, mbstd_group_size=4, mbstd_num_channels=1,
                 conv_clamp=None):
        super().__init__()
        self.in_channels, self.cmap_dim = in_channels, cmap_dim
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, conv_clamp=conv_clamp)
        self.fc = FullyConnected(in_channels * resolution ** 2, in_channels)
        self.out = FullyConnected(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def features(self, x):
        """The last hidden features ``[N, in_channels]`` (float32)."""
        return lrelu(self.fc(self.conv(self.mbstd(x.to(self.fc.weight.dtype))).flatten(1)))

    def forward(self, h, cmap):
        x = self.out(h)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x
