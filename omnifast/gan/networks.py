"""StyleGAN2's networks as EG3D defines them, in plain PyTorch (no custom CUDA plugins): the
mapping network, the modulated-convolution synthesis network that emits the tri-grid, EG3D's
super-resolution blocks, and the residual discriminator (blocks, minibatch standard deviation,
epilogue) with equalised learning rate: weights drawn from N(0, 1) and scaled at run time by
``1 / sqrt(fan_in)`` (times the learning-rate multiplier), EG3D's bias inits, ``conv_clamp``,
and the [1, 3, 3, 1] filter for every resampling with EG3D's padding. Module and parameter names
are EG3D's (``fc0``, ``embed``, ``b64.conv1``, ``b4.out``, ...), so state dicts line up.
Resampling convolutions work at the lower resolution: up, a transposed convolution (stride 2)
then the filter; down, the filter then a convolution of stride 2."""
import contextlib
import contextvars
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops.activation import bias_act as fused_bias_act
from ..render.decoder import FullyConnected

LRELU_GAIN = math.sqrt(2)
_FUSED = contextvars.ContextVar("omnifast_fused_bias_act", default=True)


@contextlib.contextmanager
def fused_activations(enabled):
    """Inside, the networks' ``bias_act`` runs omnifast's op (:func:`omnifast.bias_act`, one pass
    each way; the default) or, disabled, the plain PyTorch one (EG3D's path without its CUDA
    plugin, the reference backend's): the same values to rounding."""
    token = _FUSED.set(bool(enabled))
    try:
        yield
    finally:
        _FUSED.reset(token)


class _Activation(torch.autograd.Function):
    """EG3D's ``bias_act`` after the bias: leaky ReLU (0.2) times sqrt 2 (or linear), times
    ``gain``, clamped to +-``clamp``, keeping only its output for the backward (as StyleGAN2's
    fused op does): the input, a sum nothing else needs, is freed at once, and the clamp keeps no
    copy of it either. Its backward is made of differentiable operations on the output's masks,
    so R1's double backward runs through it."""

    @staticmethod
    def forward(ctx, x, leaky, gain, clamp):
        y = F.leaky_relu(x, 0.2) * LRELU_GAIN if leaky else x
        if gain != 1:
            y = y * gain
        if clamp is not None:
            y = y.clamp(-clamp, clamp)
        ctx.save_for_backward(y)
        ctx.slopes = (LRELU_GAIN * gain, 0.2 * LRELU_GAIN * gain) if leaky else (gain, gain)
        ctx.clamp = clamp
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        positive, negative = ctx.slopes
        # where() keeps only boolean masks for R1's double backward, not a float slope per element
        out = torch.where(y > 0, grad * positive, grad * negative) if positive != negative else grad * positive
        if ctx.clamp is not None:
            out = torch.where(y.abs() < ctx.clamp, out, torch.zeros_like(out))
        return out, None, None, None


def lrelu(x):
    """``leaky_relu(x, 0.2) * sqrt 2``, keeping only its output."""
    return bias_act(x)


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


class _Resample(torch.autograd.Function):
    """The [1, 3, 3, 1] filter of each channel times ``gain``: a convolution (``stride`` 1 or 2,
    ``padding`` on every side) or, ``up``, the zero-insertion upsampling by 2 (a transposed
    convolution of stride 2, padding 1: EG3D's ``upsample2d``, zeros outside the image). Linear
    with a constant kernel, so its backward is the adjoint and nothing is kept for it (a
    convolution would keep its input, a full-resolution tensor per resampling layer)."""

    @staticmethod
    def forward(ctx, x, padding, gain, stride, up):
        ctx.args = (padding, gain, stride, x.shape[1])
        ctx.up = up
        return _filter(x, *ctx.args, transposed=up)

    @staticmethod
    def backward(ctx, grad):
        return _filter(grad, *ctx.args, transposed=not ctx.up), None, None, None, None


def _filter(x, padding, gain, stride, channels, transposed):
    kernel = (setup_filter() * gain).to(x).expand(channels, 1, 4, 4)
    op = F.conv_transpose2d if transposed else F.conv2d
    return op(x, kernel, stride=stride, padding=padding, groups=channels)


def blur(x, padding, gain=1.0, stride=1):
    """The [1, 3, 3, 1] filter with ``padding`` on each side (EG3D's ``upfirdn2d``), every
    ``stride``-th pixel kept."""
    return _Resample.apply(x, padding, gain, stride, False)


def upsample2d(x):
    """EG3D's ``upsample2d``: zeros inserted, then the [1, 3, 3, 1] filter times 4 (zero padding,
    not a bilinear resize, which repeats the border)."""
    return _Resample.apply(x, 1, 4.0, 2, True)


def conv_up2(x, weight, groups=1):
    """StyleGAN2's upsampling convolution: ``weight [out, in / groups, k, k]`` as a transposed
    convolution of stride 2 (the cost of a convolution at the input's resolution), then the
    [1, 3, 3, 1] blur; twice the input's size."""
    out, k = weight.shape[0] // groups, weight.shape[-1]
    transposed = weight.reshape(groups, out, -1, k, k).transpose(1, 2).reshape(-1, out, k, k)
    x = F.conv_transpose2d(x, transposed, stride=2, groups=groups)  # [N, out * groups, 2H + k - 2, ...]
    return blur(x, (5 - k) // 2, 4.0)  # (2H + k - 2) + 2 pad - 3 = 2H; gain 4: the zeros inserted


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

    def forward(self, z, c, truncation_psi=1.0, truncation_cutoff=None, update_emas=False):
        parts = [normalize_2nd_moment(z)] if self.z_dim else []
        if self.c_dim:
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, 1)
        for i in range(self.num_layers):
            x = lrelu(getattr(self, f"fc{i}")(x))
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cutoff], truncation_psi), x[:, cutoff:]], 1)
        return x


def modulated_conv2d(x, weight, styles, *, demodulate=True, up=False, padding=0):
    """StyleGAN2's modulated convolution, EG3D's fused form: the styles ``[N, in]`` (and the
    demodulation) folded into each sample's weights, one grouped convolution over the batch;
    ``up``: the upsampling convolution. Only the input is kept for the backward."""
    n, (out, channels, k, _) = x.shape[0], weight.shape
    w = weight[None] * styles[:, None, :, None, None]  # [N, out, in, k, k]
    if demodulate:
        w = w * (w.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    w = w.reshape(n * out, channels, k, k).to(x.dtype)
    x = x.reshape(1, n * channels, *x.shape[2:])
    x = conv_up2(x, w, groups=n) if up else F.conv2d(x, w, padding=padding, groups=n)
    return x.reshape(n, out, *x.shape[2:])


NOISE_MODES = ("random", "const", "none")


class SynthesisLayer(nn.Module):
    """EG3D's ``SynthesisLayer``: ``affine`` (w to styles, bias 1), the modulated convolution
    (``up`` 2: upsampling), noise (``noise_mode`` 'random': drawn per image, 'const': the stored
    ``noise_const``, 'none'), both times ``noise_strength``, then bias, leaky ReLU times sqrt 2
    (times ``gain``) and ``conv_clamp``."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 conv_clamp=None):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim, self.resolution = in_channels, out_channels, w_dim, resolution
        self.up, self.use_noise, self.conv_clamp, self.padding = up, use_noise, conv_clamp, kernel_size // 2
        self.register_buffer("resample_filter", setup_filter())
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, w, noise_mode="random", gain=1.0):
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up == 2, padding=self.padding)
        if self.use_noise and noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, gain, clamp)


class ToRGBLayer(nn.Module):
    """EG3D's ``ToRGBLayer``: a modulated 1 x 1 convolution without demodulation (styles times
    ``1 / sqrt(in)``), bias, ``conv_clamp``."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim, self.conv_clamp = in_channels, out_channels, w_dim, conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w):
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp, activation="linear")


class SynthesisBlock(nn.Module):
    """EG3D's ``SynthesisBlock`` ('skip'): the constant (first block) or ``conv0`` (upsampling;
    ``up`` False: EG3D's ``SynthesisBlockNoUp`` of the super-resolution modules), ``conv1``, and
    ``torgb`` added to the image branch (upsampled with ``upsample2d`` when ``up``). Takes
    ``num_conv + num_torgb`` ws."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last=False, up=True,
                 conv_clamp=None, use_noise=True):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution, self.img_channels = in_channels, w_dim, resolution, img_channels
        self.is_last, self.up = is_last, up
        self.register_buffer("resample_filter", setup_filter())
        layer = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, use_noise=use_noise)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2 if up else 1, **layer)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv, self.num_torgb = (1 if in_channels == 0 else 2), 1

    def forward(self, x, img, ws, noise_mode="random"):
        w = ws.unbind(1)
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, w[0], noise_mode)
        x = self.conv1(x, w[self.num_conv - 1], noise_mode)
        if img is not None and self.up:
            img = upsample2d(img)
        y = self.torgb(x, w[self.num_conv]).to(ws.dtype)
        return x, (y if img is None else img + y)


def channels_at(resolution, channel_base, channel_max):
    return min(channel_base // resolution, channel_max)


def check_noise_mode(noise_mode):
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")


class SynthesisNetwork(nn.Module):
    """EG3D's ``SynthesisNetwork``: blocks ``b4`` ... ``b{img_resolution}``; ``num_ws`` = every
    convolution plus the last block's ``torgb`` (consecutive blocks share a w: a block's
    ``torgb`` and the next block's ``conv0``)."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, conv_clamp=None,
                 use_noise=True):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"SynthesisNetwork: img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(channels_at(r // 2, channel_base, channel_max) if r > 4 else 0,
                                   channels_at(r, channel_base, channel_max), w_dim, r, img_channels,
                                   is_last=r == img_resolution, conv_clamp=conv_clamp, use_noise=use_noise)
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1

    def forward(self, ws, noise_mode="random"):
        check_noise_mode(noise_mode)
        if ws.dim() != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        x = img = None
        i = 0
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            x, img = block(x, img, ws.narrow(1, i, block.num_conv + block.num_torgb), noise_mode)
            i += block.num_conv
        return img


class StyleGAN2Backbone(nn.Module):
    """EG3D's ``StyleGAN2Backbone`` (``networks_stylegan2.Generator``): ``mapping`` and
    ``synthesis``; in EG3D and OmniAvatar it emits the tri-plane (tri-grid) channels at 256^2."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None, **synthesis_kwargs):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **(mapping_kwargs or {}))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, noise_mode="random"):
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas=update_emas)
        return self.synthesis(ws, noise_mode)


# EG3D's super-resolution modules: (input resolution, output resolution, block widths).
EG3D_SUPERRESOLUTION = {
    "SuperresolutionHybrid2X": (64, 128, (128, 64)),
    "SuperresolutionHybrid4X": (128, 256, (128, 64)),
    "SuperresolutionHybrid8XDC": (128, 512, (256, 128)),
}


class SuperResolution(nn.Module):
    """EG3D's super-resolution modules in one: the raw feature image and its RGB resized
    (bilinear, antialiased) to the fixed ``input_resolution``, so the neural rendering resolution
    may change during training, then ``block0`` and ``block1`` on the last w. Twice the input
    (EG3D's ``SuperresolutionHybrid2X`` and ``4X``): ``block0`` keeps the resolution (EG3D's
    ``SynthesisBlockNoUp``); four times (``8XDC``): both blocks double it. Widths and
    ``conv_clamp`` 256 are EG3D's (``widths`` changes them for small models). With ``autocast``
    the blocks run in bfloat16 (EG3D runs them in fp16), the image returns in float32. With
    ``recompute``, ``block1`` keeps only its inputs for the backward and runs again there."""
    autocast = False
    recompute = False

    def __init__(self, channels, input_resolution, output_resolution, w_dim=512, widths=None, conv_clamp=256,
                 antialias=True, use_noise=True):
        super().__init__()
        factor = output_resolution // input_resolution
        if factor not in (2, 4) or factor * input_resolution != output_resolution:
            raise ValueError(f"SuperResolution: the output must be 2 or 4 times the super-resolution input, got "
                             f"{input_resolution} -> {output_resolution}")
        self.input_resolution, self.output_resolution = input_resolution, output_resolution
        self.sr_antialias = antialias
        first, second = widths or ((256, 128) if factor == 4 else (128, 64))
        block = dict(w_dim=w_dim, img_channels=3, conv_clamp=conv_clamp, use_noise=use_noise)
        self.block0 = SynthesisBlock(channels, first, resolution=output_resolution // 2, up=factor == 4, **block)
        self.block1 = SynthesisBlock(first, second, resolution=output_resolution, is_last=True, **block)
        if factor == 2:  # EG3D's 2X and 4X modules carry the filter as a buffer, 8XDC does not
            self.register_buffer("resample_filter", setup_filter())

    def forward(self, rgb, x, ws, noise_mode="none", with_first=False):
        """The image; ``with_first``: and the image after ``block0``."""
        size = (self.input_resolution, self.input_resolution)
        resize = lambda t: t if t.shape[-2:] == size else F.interpolate(  # noqa: E731
            t, size=size, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
        x, rgb = resize(x), resize(rgb)
        w = ws[:, -1:].expand(-1, 3, -1)
        with torch.autocast(rgb.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            x, first = self.block0(x, rgb, w, noise_mode)
            x, rgb = recomputed(self.block1, self.recompute, x, first, w, noise_mode)
        return (rgb.to(ws.dtype), first.to(ws.dtype)) if with_first else rgb.to(ws.dtype)


def recomputed(module, recompute, *args):
    """``module(*args)``; with ``recompute`` (and gradients on), keeping only ``args`` for the
    backward, which runs the module again with the same random numbers (double backward too)."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def bias_act(x, bias=None, gain=1.0, clamp=None, activation="lrelu"):
    """EG3D's ``bias_act``: add the bias, leaky ReLU (0.2) times sqrt 2, times ``gain``, clamped
    to +-``clamp`` (``conv_clamp`` times the gain)."""
    leaky = activation == "lrelu"
    identity = not leaky and gain == 1 and clamp is None
    if not identity and _FUSED.get() and x.dtype in (torch.float32, torch.float64) and x.dim() >= 2:
        return fused_bias_act(x, None if bias is None else bias.to(x.dtype), act=activation,
                              gain=gain * LRELU_GAIN if leaky else gain, clamp=clamp)
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))
    return x if identity else _Activation.apply(x, leaky, gain, clamp)


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
        elif w.shape[-1] == 1:  # the filter at every other pixel, then the 1 x 1 convolution
            x = F.conv2d(blur(x, 1, stride=2), w)
        else:  # filter (padding k // 2 + 1), then the stride-2 convolution
            x = F.conv2d(blur(x, self.padding + 1), w, stride=2)
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
