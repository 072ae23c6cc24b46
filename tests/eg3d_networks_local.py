"""EG3D's released network layouts, re-implemented locally from their semantics: the StyleGAN2 layers
and networks of `training/networks_stylegan2.py`, the super-resolution modules of
`training/superresolution.py`, `TriPlaneGenerator` and `OSGDecoder` of `training/triplane.py` and
`DualDiscriminator` of `training/dual_discriminator.py`, written in plain PyTorch (no custom ops, no
fp16 paths, no float32 pins: everything runs in float64 after `.double()`), with EG3D's class names,
constructor signatures, attribute names and parameter/buffer names, so `state_dict()` keys equal
EG3D's. The renderer is `eg3d_local`'s, under EG3D's names.

It is the oracle for omnifast's importer of EG3D network pickles: `build_networks` constructs G, D and
G_ema as EG3D's train.py would (with random values in every tensor), `dump_snapshot` writes them in
the format of `torch_utils.persistence` (each persistent object reduces to
`torch_utils.persistence._reconstruct_persistent_obj(meta)`), and `load_snapshot_unsafe` reads such a
file back with plain `pickle.load` into these classes."""
import contextlib
import copy
import functools
import inspect
import os
import pickle
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

import eg3d_local

_FIR = [1, 3, 3, 1]  # EG3D's default resample filter taps (a list: it is recorded in `_init_kwargs`)
_ACT_GAIN = {'linear': 1, 'lrelu': np.sqrt(2)}  # EG3D's def_gain per activation (int 1, numpy sqrt(2))

# ---- torch_utils.persistence: what `@persistence.persistent_class` adds to a class

_PERSISTENT = {}       # class name -> local class, for `_reconstruct_persistent_obj`
_src_override = {}     # EG3D module name -> module_src, while `dump_snapshot(module_src=...)` runs


@functools.lru_cache(maxsize=None)
def _own_source():
    return inspect.getsource(sys.modules[__name__])


def _persistent(eg3d_module, register=True):
    """Record each instance's constructor arguments after construction (deep copies, as passed), and
    reduce instances to `_reconstruct_persistent_obj(meta)` with meta version 6 (`register`: by its
    class name for `_reconstruct_persistent_obj`; False for a class whose name EG3D's holds)."""
    def mark(cls):
        construct = cls.__init__

        @functools.wraps(construct)
        def __init__(self, *args, **kwargs):
            construct(self, *args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            state = object.__reduce__(self)[2]  # torch.nn.Module.__getstate__(): a copy of __dict__
            src = _src_override.get(eg3d_module) or _own_source()
            meta = dict(type='class', version=6, module_src=src, class_name=cls.__name__, state=state)
            return _reconstruct_persistent_obj, (meta,), None

        cls.__init__, cls.__reduce__, cls._eg3d_module = __init__, __reduce__, eg3d_module
        if register:
            _PERSISTENT[cls.__name__] = cls
        return cls
    return mark


def _store(obj, values, names):
    """obj.<name> = values[name] for each name, in order: the constructors' attributes in EG3D's order."""
    for name in names.split():
        setattr(obj, name, values[name])


def _reconstruct_persistent_obj(meta):
    """Local stand-in for EG3D's: rebuild the local class named by meta['class_name'] from its state."""
    assert meta['type'] == 'class' and meta['version'] == 6
    cls = _PERSISTENT[meta['class_name']]
    obj = cls.__new__(cls)
    obj.__setstate__(dict(meta['state']))
    return obj


class EasyDict(dict):
    """dnnlib.util.EasyDict: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


# ---- torch_utils.ops: FIR resampling, bias + activation, modulated convolution

def _setup_filter(taps):
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)  # 4 taps: EG3D keeps the filter 2-D (separable only from 8 taps on)
    return f / f.sum()


def _upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1):
    """Insert up-1 zeros after each pixel, zero-pad (negative crops) by (x0, x1, y0, y1), convolve with
    f * gain, keep every down-th pixel."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0):x.shape[2] - max(-y1, 0), max(-x0, 0):x.shape[3] - max(-x1, 0)]
    # The depthwise convolution with the flipped filter, as sums of shifted copies along each axis (the
    # filter is an outer product of 1-D taps), a row of taps then a column: much faster in float64.
    k = (f * gain).double().flip([0, 1])
    ky, kx = k.sum(1), k.sum(0) / k.sum()
    assert torch.allclose(torch.outer(ky, kx), k), 'a separable filter'
    for dim, taps in ((3, kx.tolist()), (2, ky.tolist())):
        size = x.shape[dim] - len(taps) + 1
        y = x.narrow(dim, 0, size) * taps[0]
        for i, t in enumerate(taps[1:], 1):
            y.add_(x.narrow(dim, i, size), alpha=t)
        x = y.index_select(dim, torch.arange(0, size, down)) if down > 1 else y
    return x


def _upsample2d(x, f, up=2):
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return _upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


def _conv2d_resample(x, w, f=None, up=1, down=1, padding=0, flip_weight=True):
    """EG3D's conv2d_resample for the cases its networks use (padding counted on the upsampled image)."""
    k = w.shape[-1]
    p0 = p1 = padding
    if up > 1:
        p0, p1 = p0 + (f.shape[-1] + up - 1) // 2, p1 + (f.shape[-1] - up) // 2
    if down > 1:
        p0, p1 = p0 + (f.shape[-1] - down + 1) // 2, p1 + (f.shape[-1] - down) // 2
    if down > 1:
        assert up == 1
        if k == 1:  # filter and subsample first, then the 1x1 convolution
            x = _upfirdn2d(x, f, down=down, pad=(p0, p1, p0, p1))
            return F.conv2d(x, w if flip_weight else w.flip([2, 3]))
        x = _upfirdn2d(x, f, pad=(p0, p1, p0, p1))  # filter, then a strided convolution
        return F.conv2d(x, w if flip_weight else w.flip([2, 3]), stride=down)
    if up > 1:  # transposed strided convolution, then the filter (gain up^2)
        assert k > 1
        wt = w.transpose(0, 1)
        wt = wt.flip([2, 3]) if flip_weight else wt
        p0, p1 = p0 - (k - 1), p1 - (k - up)
        pt = max(min(-p0, -p1), 0)
        x = F.conv_transpose2d(x, wt, stride=up, padding=pt)
        return _upfirdn2d(x, f, pad=(p0 + pt, p1 + pt, p0 + pt, p1 + pt), gain=up * up)
    return F.conv2d(x, w if flip_weight else w.flip([2, 3]), padding=padding)


def _bias_act(x, b=None, act='linear', gain=None, clamp=None):
    """Bias, activation (lrelu: slope 0.2), gain (default: the activation's), clamp to +-clamp."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if act == 'lrelu':
        x = F.leaky_relu(x, 0.2)
    else:
        assert act == 'linear', act
    gain = float(_ACT_GAIN[act] if gain is None else gain)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-float(clamp), float(clamp))
    return x


def _normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def _modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None, demodulate=True,
                      flip_weight=True):
    """Modulated convolution, unfused: scale the input by the styles, convolve with the shared weight,
    scale the output by the demodulation coefficients, add the noise."""
    n = x.shape[0]
    weight, styles = weight.to(x.dtype), styles.to(x.dtype)
    y = _conv2d_resample(x * styles.reshape(n, -1, 1, 1), weight, resample_filter, up=up, padding=padding,
                         flip_weight=flip_weight)
    if demodulate:
        dcoefs = ((weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)).square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        y = y * dcoefs.reshape(n, -1, 1, 1)
    if noise is not None:
        y = y + noise.to(y.dtype)
    return y


# ---- training/networks_stylegan2.py

@_persistent('training.networks_stylegan2')
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0):
        super().__init__()
        _store(self, locals(), 'in_features out_features activation')
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)  # a numpy float64
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * float(self.weight_gain)
        b = None if self.bias is None else self.bias.to(x.dtype) * float(self.bias_gain)
        return _bias_act(x.matmul(w.t()), b, self.activation)


@_persistent('training.networks_stylegan2')
class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation='linear', up=1, down=1,
                 resample_filter=_FIR, conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        _store(self, locals(), 'in_channels out_channels activation up down conv_clamp')
        self.register_buffer('resample_filter', _setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = _ACT_GAIN[activation]
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer('weight', weight)
            if bias is not None:
                self.register_buffer('bias', bias)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        w = self.weight.to(x.dtype) * float(self.weight_gain)
        x = _conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                             flip_weight=self.up == 1)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return _bias_act(x, self.bias, self.activation, gain=self.act_gain * gain, clamp=clamp)


@_persistent('training.networks_stylegan2')
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.998):
        super().__init__()
        _store(self, locals(), 'z_dim c_dim w_dim num_ws num_layers w_avg_beta')
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f'fc{i}', FullyConnectedLayer(features[i], features[i + 1], activation=activation,
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        x = _normalize_2nd_moment(z) if self.z_dim > 0 else None
        if self.c_dim > 0:
            y = _normalize_2nd_moment(self.embed(c))
            x = y if x is None else torch.cat([x, y], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f'fc{i}')(x)
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            w_avg = self.w_avg.to(x.dtype)
            if self.num_ws is None or truncation_cutoff is None:
                x = w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


@_persistent('training.networks_stylegan2')
class SynthesisLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation='lrelu', resample_filter=_FIR, conv_clamp=None, channels_last=False):
        super().__init__()
        _store(self, locals(), 'in_channels out_channels w_dim resolution up use_noise activation conv_clamp')
        self.register_buffer('resample_filter', _setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = _ACT_GAIN[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
        assert noise_mode in ['random', 'const', 'none']
        assert x.shape[1:] == (self.in_channels, self.resolution // self.up, self.resolution // self.up)
        noise = None
        if self.use_noise and noise_mode == 'random':  # EG3D's float32 draw, scaled in x's precision
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise.to(x.dtype) * self.noise_strength
        if self.use_noise and noise_mode == 'const':
            noise = self.noise_const * self.noise_strength
        x = _modulated_conv2d(x, self.weight, self.affine(w), noise=noise, up=self.up, padding=self.padding,
                              resample_filter=self.resample_filter, flip_weight=self.up == 1)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return _bias_act(x, self.bias, self.activation, gain=self.act_gain * gain, clamp=clamp)


@_persistent('training.networks_stylegan2')
class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        _store(self, locals(), 'in_channels out_channels w_dim conv_clamp')
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fused_modconv=True):
        styles = self.affine(w) * float(self.weight_gain)
        x = _modulated_conv2d(x, self.weight, styles, demodulate=False)
        return _bias_act(x, self.bias, clamp=self.conv_clamp)


class _SynthesisBlockBase(torch.nn.Module):
    """SynthesisBlock (conv0 upsamples 2x, the image is upsampled before adding torgb) and, with
    _up = 1, superresolution.py's SynthesisBlockNoUp. Architecture 'skip' only."""
    _up = 2

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip',
                 resample_filter=_FIR, conv_clamp=256, use_fp16=False, fp16_channels_last=False,
                 fused_modconv_default=True, **layer_kwargs):
        assert architecture == 'skip', 'only the skip architecture is re-implemented'
        super().__init__()
        _store(self, locals(), 'in_channels w_dim resolution img_channels is_last architecture use_fp16')
        self.channels_last = use_fp16 and fp16_channels_last
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer('resample_filter', _setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            up_kwargs = dict(up=2, resample_filter=resample_filter) if self._up == 2 else {}
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, **up_kwargs,
                                        conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                channels_last=self.channels_last)
        self.num_torgb += 1

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, update_emas=False, **layer_kwargs):
        assert ws.shape[1:] == (self.num_conv + self.num_torgb, self.w_dim)
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.conv1(self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1]), next(w_iter), **layer_kwargs)
        else:
            x = self.conv0(x, next(w_iter), **layer_kwargs)
            x = self.conv1(x, next(w_iter), **layer_kwargs)
        if img is not None and self._up == 2:
            img = _upsample2d(img, self.resample_filter)  # zero-insertion + FIR, not bilinear
        y = self.torgb(x, next(w_iter))
        img = img.add_(y) if img is not None else y  # in place, as EG3D: NoUp writes into its input image
        return x, img


@_persistent('training.networks_stylegan2')
class SynthesisBlock(_SynthesisBlockBase):
    _up = 2


@_persistent('training.networks_stylegan2')
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=4,
                 **block_kwargs):
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0
        super().__init__()
        _store(self, locals(), 'w_dim img_resolution')
        self.img_resolution_log2 = int(np.log2(img_resolution))
        _store(self, locals(), 'img_channels num_fp16_res')
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=res >= fp16_resolution,
                                   **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f'b{res}', block)

    def forward(self, ws, **block_kwargs):
        assert ws.shape[1:] == (self.num_ws, self.w_dim)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:  # each block also reads the next block's first w for its torgb
            block = getattr(self, f'b{res}')
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **block_kwargs)
            w_idx += block.num_conv
        return img


@_persistent('training.networks_stylegan2')
class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs):  # noqa: B006
        super().__init__()
        _store(self, locals(), 'z_dim c_dim w_dim img_resolution img_channels')
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)


@_persistent('training.networks_stylegan2')
class DiscriminatorBlock(torch.nn.Module):
    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture='resnet', activation='lrelu', resample_filter=_FIR, conv_clamp=None, use_fp16=False,
                 fp16_channels_last=False, freeze_layers=0):
        assert in_channels in [0, tmp_channels]
        assert architecture == 'resnet', 'only the resnet architecture is re-implemented'
        super().__init__()
        _store(self, locals(), 'in_channels resolution img_channels first_layer_idx architecture use_fp16')
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer('resample_filter', _setup_filter(resample_filter))
        self.num_layers = 0

        def trainable():  # layers before freeze_layers (counted over the whole D) hold buffers
            self.num_layers += 1
            return self.first_layer_idx + self.num_layers - 1 >= freeze_layers

        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), conv_clamp=conv_clamp, channels_last=self.channels_last)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), conv_clamp=conv_clamp, channels_last=self.channels_last)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, conv_clamp=conv_clamp,
                                 channels_last=self.channels_last)
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2, trainable=trainable(),
                                resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        if self.in_channels == 0:
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = None
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=np.sqrt(0.5))
        return y.add_(x), img


@_persistent('training.networks_stylegan2')
class MinibatchStdLayer(torch.nn.Module):
    def __init__(self, group_size, num_channels=1):
        super().__init__()
        _store(self, locals(), 'group_size num_channels')

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        nf = self.num_channels
        y = x.reshape(g, -1, nf, c // nf, h, w)  # sample i is in group i % (n // g)
        y = ((y - y.mean(dim=0)).square().mean(dim=0) + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4]).reshape(-1, nf, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


@_persistent('training.networks_stylegan2')
class DiscriminatorEpilogue(torch.nn.Module):
    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture='resnet', mbstd_group_size=4,
                 mbstd_num_channels=1, activation='lrelu', conv_clamp=None):
        assert architecture == 'resnet', 'only the resnet architecture is re-implemented'
        super().__init__()
        _store(self, locals(), 'in_channels cmap_dim resolution img_channels architecture')
        self.mbstd = MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels) \
            if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * float(1 / np.sqrt(self.cmap_dim))
        return x


# ---- training/superresolution.py

@_persistent('training.superresolution')
class SynthesisBlockNoUp(_SynthesisBlockBase):
    _up = 1


def _superresolve(sr, rgb, x, ws, resize_if_smaller_only, block_kwargs):
    ws = ws[:, -1:, :].repeat(1, 3, 1)  # all six SR layers use the backbone's last w
    size = sr.input_resolution
    if (x.shape[-1] < size) if resize_if_smaller_only else (x.shape[-1] != size):
        resize = functools.partial(F.interpolate, size=(size, size), mode='bilinear', align_corners=False,
                                   antialias=sr.sr_antialias)
        x, rgb = resize(x), resize(rgb)
    x, rgb = sr.block0(x, rgb, ws, **block_kwargs)
    x, rgb = sr.block1(x, rgb, ws, **block_kwargs)
    return rgb


def _sr_blocks(sr, channels, widths, resolutions, first_block, sr_num_fp16_res, block_kwargs):
    use_fp16 = sr_num_fp16_res > 0
    clamp = 256 if use_fp16 else None
    sr.block0 = first_block(channels, widths[0], w_dim=512, resolution=resolutions[0], img_channels=3, is_last=False,
                            use_fp16=use_fp16, conv_clamp=clamp, **block_kwargs)
    sr.block1 = SynthesisBlock(widths[0], widths[1], w_dim=512, resolution=resolutions[1], img_channels=3,
                               is_last=True, use_fp16=use_fp16, conv_clamp=clamp, **block_kwargs)


@_persistent('training.superresolution')
class SuperresolutionHybrid2X(torch.nn.Module):
    def __init__(self, channels, img_resolution, sr_num_fp16_res, sr_antialias, num_fp16_res=4, conv_clamp=None,
                 channel_base=None, channel_max=None, **block_kwargs):
        super().__init__()
        assert img_resolution == 128
        self.input_resolution = 64
        self.sr_antialias = sr_antialias
        _sr_blocks(self, channels, (128, 64), (64, 128), SynthesisBlockNoUp, sr_num_fp16_res, block_kwargs)
        self.register_buffer('resample_filter', _setup_filter(_FIR))

    def forward(self, rgb, x, ws, **block_kwargs):
        return _superresolve(self, rgb, x, ws, False, block_kwargs)


@_persistent('training.superresolution')
class SuperresolutionHybrid4X(torch.nn.Module):
    def __init__(self, channels, img_resolution, sr_num_fp16_res, sr_antialias, num_fp16_res=4, conv_clamp=None,
                 channel_base=None, channel_max=None, **block_kwargs):
        super().__init__()
        assert img_resolution == 256
        self.sr_antialias = sr_antialias
        self.input_resolution = 128
        _sr_blocks(self, channels, (128, 64), (128, 256), SynthesisBlockNoUp, sr_num_fp16_res, block_kwargs)
        self.register_buffer('resample_filter', _setup_filter(_FIR))

    def forward(self, rgb, x, ws, **block_kwargs):
        return _superresolve(self, rgb, x, ws, True, block_kwargs)  # 4X only ever upsizes its input


@_persistent('training.superresolution')
class SuperresolutionHybrid8XDC(torch.nn.Module):
    def __init__(self, channels, img_resolution, sr_num_fp16_res, sr_antialias, num_fp16_res=4, conv_clamp=None,
                 channel_base=None, channel_max=None, **block_kwargs):
        super().__init__()
        assert img_resolution == 512
        self.input_resolution = 128
        self.sr_antialias = sr_antialias
        _sr_blocks(self, channels, (256, 128), (256, 512), SynthesisBlock, sr_num_fp16_res, block_kwargs)

    def forward(self, rgb, x, ws, **block_kwargs):
        return _superresolve(self, rgb, x, ws, False, block_kwargs)


# ---- training/triplane.py and the renderer (eg3d_local's, under EG3D's class names)

class MipRayMarcher2(eg3d_local.MipRayMarcher2):
    pass


class ImportanceRenderer(eg3d_local.ImportanceRenderer):
    def __init__(self):
        torch.nn.Module.__init__(self)
        self.ray_marcher = MipRayMarcher2()
        self.plane_axes = eg3d_local.generate_planes()


class RaySampler(eg3d_local.RaySampler):
    def __init__(self):
        super().__init__()
        self.ray_origins_h, self.ray_directions, self.depths, self.image_coords, self.rendering_options = [None] * 5


class OSGDecoder(torch.nn.Module):
    def __init__(self, n_features, options):
        super().__init__()
        self.hidden_dim = 64
        self.net = torch.nn.Sequential(
            FullyConnectedLayer(n_features, self.hidden_dim, lr_multiplier=options['decoder_lr_mul']),
            torch.nn.Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + options['decoder_output_dim'],
                                lr_multiplier=options['decoder_lr_mul']))

    def forward(self, sampled_features, ray_directions):
        n, _, m, c = sampled_features.shape
        x = self.net(sampled_features.mean(1).reshape(n * m, c)).reshape(n, m, -1)
        return {'rgb': torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001, 'sigma': x[..., 0:1]}


@_persistent('training.triplane')
class TriPlaneGenerator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, sr_num_fp16_res=0, mapping_kwargs={},  # noqa: B006
                 rendering_kwargs={}, sr_kwargs={}, **synthesis_kwargs):  # noqa: B006
        super().__init__()
        _store(self, locals(), 'z_dim c_dim w_dim img_resolution img_channels')
        self.renderer = ImportanceRenderer()
        self.ray_sampler = RaySampler()
        self.backbone = Generator(z_dim, c_dim, w_dim, img_resolution=256, img_channels=32 * 3,
                                  mapping_kwargs=mapping_kwargs, **synthesis_kwargs)
        self.superresolution = _construct(class_name=rendering_kwargs['superresolution_module'], channels=32,
                                          img_resolution=img_resolution, sr_num_fp16_res=sr_num_fp16_res,
                                          sr_antialias=rendering_kwargs['sr_antialias'], **sr_kwargs)
        self.decoder = OSGDecoder(32, {'decoder_lr_mul': rendering_kwargs.get('decoder_lr_mul', 1),
                                       'decoder_output_dim': 32})
        self.neural_rendering_resolution = 64
        self.rendering_kwargs = rendering_kwargs
        self._last_planes = None

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        if self.rendering_kwargs['c_gen_conditioning_zero']:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.rendering_kwargs.get('c_scale', 0), truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    @staticmethod
    def _three_planes(planes):
        return planes.view(len(planes), 3, 32, planes.shape[-2], planes.shape[-1])

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, cache_backbone=False,
                  use_cached_backbone=False, **synthesis_kwargs):
        if neural_rendering_resolution is None:
            neural_rendering_resolution = self.neural_rendering_resolution
        else:
            self.neural_rendering_resolution = neural_rendering_resolution  # remembered, as EG3D does
        ray_origins, ray_directions = self.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3),
                                                       neural_rendering_resolution)
        if use_cached_backbone and self._last_planes is not None:
            planes = self._last_planes
        else:
            planes = self.backbone.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
        if cache_backbone:
            self._last_planes = planes  # the backbone's output, [N, 96, 256, 256]
        features, depths, _ = self.renderer(self._three_planes(planes), self.decoder, ray_origins, ray_directions,
                                            self.rendering_kwargs)
        n, h = len(ray_origins), self.neural_rendering_resolution
        feature_image = features.permute(0, 2, 1).reshape(n, features.shape[-1], h, h).contiguous()
        depth_image = depths.permute(0, 2, 1).reshape(n, 1, h, h)
        rgb_image = feature_image[:, :3]  # a view: a NoUp SR block at its input size adds into it
        sr_kwargs = {k: v for k, v in synthesis_kwargs.items() if k != 'noise_mode'}
        sr_image = self.superresolution(rgb_image, feature_image, ws,
                                        noise_mode=self.rendering_kwargs['superresolution_noise_mode'], **sr_kwargs)
        return {'image': sr_image, 'image_raw': rgb_image, 'image_depth': depth_image}

    def sample(self, coordinates, directions, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False,
               **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        planes = self._three_planes(self.backbone.synthesis(ws, update_emas=update_emas, **synthesis_kwargs))
        return self.renderer.run_model(planes, self.decoder, coordinates, directions, self.rendering_kwargs)

    def sample_mixed(self, coordinates, directions, ws, truncation_psi=1, truncation_cutoff=None, update_emas=False,
                     **synthesis_kwargs):
        planes = self._three_planes(self.backbone.synthesis(ws, update_emas=update_emas, **synthesis_kwargs))
        return self.renderer.run_model(planes, self.decoder, coordinates, directions, self.rendering_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, neural_rendering_resolution=None,
                update_emas=False, cache_backbone=False, use_cached_backbone=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, c, update_emas=update_emas, neural_rendering_resolution=neural_rendering_resolution,
                              cache_backbone=cache_backbone, use_cached_backbone=use_cached_backbone,
                              **synthesis_kwargs)


# ---- training/dual_discriminator.py

def filtered_resizing(image_orig_tensor, size, f, filter_mode='antialiased'):
    assert filter_mode in ('antialiased', 'none'), 'only the antialiased and none modes are re-implemented'
    return F.interpolate(image_orig_tensor, size=(size, size), mode='bilinear', align_corners=False,
                         antialias=filter_mode == 'antialiased')


@_persistent('training.dual_discriminator')
class DualDiscriminator(torch.nn.Module):
    def __init__(self, c_dim, img_resolution, img_channels, architecture='resnet', channel_base=32768,
                 channel_max=512, num_fp16_res=4, conv_clamp=256, cmap_dim=None, disc_c_noise=0,
                 block_kwargs={}, mapping_kwargs={}, epilogue_kwargs={}):  # noqa: B006
        super().__init__()
        img_channels *= 2  # the image and the resized raw image, stacked
        _store(self, locals(), 'c_dim img_resolution')
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        cmap_dim = (channels[4] if cmap_dim is None else cmap_dim) if c_dim > 0 else 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       resolution=res, first_layer_idx=layer_idx, use_fp16=res >= fp16_resolution,
                                       **block_kwargs, **common)
            setattr(self, f'b{res}', block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)
        self.register_buffer('resample_filter', _setup_filter(_FIR))
        self.disc_c_noise = disc_c_noise

    def forward(self, img, c, update_emas=False, **block_kwargs):
        image_raw = filtered_resizing(img['image_raw'], size=img['image'].shape[-1], f=self.resample_filter)
        x, img = None, torch.cat([img['image'], image_raw], 1)
        for res in self.block_resolutions:
            x, img = getattr(self, f'b{res}')(x, img, **block_kwargs)
        cmap = None
        if self.c_dim > 0:
            if self.disc_c_noise > 0:
                c += torch.randn_like(c) * c.std(0) * self.disc_c_noise  # in place, as EG3D
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)


# ---- construction as train.py and training_loop.py do it

def _construct(class_name, *args, **kwargs):
    """dnnlib.util.construct_class_by_name for the EG3D classes above ('training.triplane.TriPlaneGenerator')."""
    return _PERSISTENT[class_name.rsplit('.', 1)[-1]](*args, **kwargs)


def _randomize_(module, seed):
    """Seeded random values in every parameter and buffer but the FIR filters, at a sensible scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            for name, t in [*mod._parameters.items(), *mod._buffers.items()]:
                if t is None or name == 'resample_filter':
                    continue
                r = torch.randn(t.shape, generator=gen)
                if isinstance(mod, FullyConnectedLayer):  # stored values are divided by the lr multiplier
                    r = r if name == 'weight' else r * 0.1 + mod._init_kwargs.get('bias_init', 0)
                    r = r / mod.bias_gain
                elif name in ('bias', 'noise_strength'):
                    r = r * 0.1
                t.copy_(r)


def build_networks(img_resolution, *, channel_base=1024, channel_max=64, d_channel_base=None, d_channel_max=None,
                   c_dim=25, depth_resolution=6, depth_resolution_importance=6, seed=0):
    """G, D and G_ema as EG3D's train.py (--cfg=ffhq --gen_pose_cond=True, other options at their defaults,
    click's floats included) and training_loop.py construct them, then random values in every tensor."""
    G_kwargs = EasyDict(class_name=None, z_dim=512, w_dim=512, mapping_kwargs=EasyDict())
    D_kwargs = EasyDict(class_name='training.networks_stylegan2.Discriminator', block_kwargs=EasyDict(),
                        mapping_kwargs=EasyDict(), epilogue_kwargs=EasyDict())
    G_kwargs.channel_base, D_kwargs.channel_base = channel_base, d_channel_base or channel_base
    G_kwargs.channel_max, D_kwargs.channel_max = channel_max, d_channel_max or channel_max
    G_kwargs.mapping_kwargs.num_layers = 2
    D_kwargs.block_kwargs.freeze_layers = 0
    D_kwargs.epilogue_kwargs.mbstd_group_size = 4
    G_kwargs.class_name = 'training.triplane.TriPlaneGenerator'
    D_kwargs.class_name = 'training.dual_discriminator.DualDiscriminator'
    G_kwargs.fused_modconv_default = 'inference_only'
    D_kwargs.disc_c_noise = 0.0
    sr_module = {128: 'SuperresolutionHybrid2X', 256: 'SuperresolutionHybrid4X', 512: 'SuperresolutionHybrid8XDC'}
    rendering_options = {
        'image_resolution': img_resolution, 'disparity_space_sampling': False, 'clamp_mode': 'softplus',
        'superresolution_module': 'training.superresolution.' + sr_module[img_resolution],
        'c_gen_conditioning_zero': False, 'gpc_reg_prob': 0.5, 'c_scale': 1.0, 'superresolution_noise_mode': 'none',
        'density_reg': 0.25, 'density_reg_p_dist': 0.004, 'reg_type': 'l1', 'decoder_lr_mul': 1.0,
        'sr_antialias': True, 'depth_resolution': depth_resolution,
        'depth_resolution_importance': depth_resolution_importance, 'ray_start': 2.25, 'ray_end': 3.3,
        'box_warp': 1, 'avg_camera_radius': 2.7, 'avg_camera_pivot': [0, 0, 0.2]}
    G_kwargs.rendering_kwargs = rendering_options
    G_kwargs.num_fp16_res = 0
    G_kwargs.sr_num_fp16_res = 4
    G_kwargs.sr_kwargs = EasyDict(channel_base=channel_base, channel_max=channel_max,
                                  fused_modconv_default='inference_only')
    G_kwargs.conv_clamp = None
    D_kwargs.num_fp16_res = 4
    D_kwargs.conv_clamp = 256

    common_kwargs = dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=3)
    G = _construct(**G_kwargs, **common_kwargs).train().requires_grad_(False)
    D = _construct(**D_kwargs, **common_kwargs).train().requires_grad_(False)
    G_ema = copy.deepcopy(G).eval()
    for i, net in enumerate([G, D, G_ema]):
        _randomize_(net, seed * 3 + i)
    G.neural_rendering_resolution = G_ema.neural_rendering_resolution = 64
    return dict(G=G, D=D, G_ema=G_ema)


# ---- the snapshot file

_PICKLED_NAMES = [  # (EG3D module, object): the globals a snapshot references besides torch's, numpy's, builtins'
    ('torch_utils.persistence', _reconstruct_persistent_obj),
    ('dnnlib.util', EasyDict),
    ('training.triplane', OSGDecoder),
    ('training.volumetric_rendering.renderer', ImportanceRenderer),
    ('training.volumetric_rendering.ray_marcher', MipRayMarcher2),
    ('training.volumetric_rendering.ray_sampler', RaySampler),
]
_NP_SCALAR = np.float64(0).__reduce__()[0]


def _legacy_np_scalar(*args):
    """numpy's scalar reconstructor, pickled as numpy 1.x's `numpy.core.multiarray.scalar`."""
    return _NP_SCALAR(*args)


_legacy_np_scalar.__name__ = _legacy_np_scalar.__qualname__ = 'scalar'


@contextlib.contextmanager
def _stand_in_modules(names):
    """Stand-in modules in sys.modules holding the given objects under EG3D's module paths (module
    parents are only added where missing), the objects' __module__ pointing there; all undone after."""
    missing = object()
    saved_modules, saved_owner = {}, []
    try:
        for path, obj in names:
            if path not in saved_modules:
                saved_modules[path] = sys.modules.get(path, missing)
                sys.modules[path] = types.ModuleType(path)
            parts = path.split('.')
            for i in range(1, len(parts)):
                parent = '.'.join(parts[:i])
                if parent not in sys.modules:
                    saved_modules[parent] = missing
                    sys.modules[parent] = types.ModuleType(parent)
            setattr(sys.modules[path], obj.__qualname__, obj)
            saved_owner.append((obj, obj.__module__))
            obj.__module__ = path
        yield
    finally:
        for obj, module in saved_owner:
            obj.__module__ = module
        for path, module in saved_modules.items():
            if module is missing:
                sys.modules.pop(path, None)
            else:
                sys.modules[path] = module


class _LegacyNumpyPickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, np.generic):
            return (_legacy_np_scalar, obj.__reduce__()[1])
        return NotImplemented


def dump_snapshot(networks, file, *, module_src=None, legacy_numpy=False, names=None):
    """Pickle {training_set_kwargs, G, D, G_ema, augment_pipe=None} as EG3D's training loop saves a
    network snapshot (deep copies in eval mode, requires_grad False, on the CPU; pickle's default
    protocol). `module_src` ({EG3D module name: source text}, e.g. EG3D's own files) replaces this
    file's source in the persistent objects' meta; `legacy_numpy` names numpy's scalar reconstructor
    `numpy.core.multiarray.scalar`, as files written under numpy 1.x do; `names` replaces the
    (module, object) pairs pickled by reference (OmniAvatar's)."""
    resolution = networks['G'].img_resolution
    data = dict(training_set_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path='ffhq.zip',
                                         use_labels=True, max_size=None, xflip=False, resolution=resolution,
                                         random_seed=0))
    for name in ('G', 'D', 'G_ema'):
        data[name] = copy.deepcopy(networks[name]).eval().requires_grad_(False).cpu()
    data['augment_pipe'] = None
    names = (names or _PICKLED_NAMES) + ([('numpy.core.multiarray', _legacy_np_scalar)] if legacy_numpy else [])
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(file, 'wb')) if isinstance(file, (str, bytes, os.PathLike)) else file
        stack.enter_context(_stand_in_modules(names))
        _src_override.update(module_src or {})
        stack.callback(_src_override.clear)
        if legacy_numpy:
            _LegacyNumpyPickler(f).dump(data)
        else:
            pickle.dump(data, f)


def load_snapshot_unsafe(file):
    """Plain pickle.load of a snapshot (it runs whatever the file names: only for files written here),
    EG3D's names resolving to the local classes."""
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(file, 'rb')) if isinstance(file, (str, bytes, os.PathLike)) else file
        stack.enter_context(_stand_in_modules(_PICKLED_NAMES))
        return pickle.load(f)
