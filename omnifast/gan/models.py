"""OmniAvatar's generator (mapping, a StyleGAN2 backbone that emits the tri-grid, the renderer
of stage II, super-resolution, an optional background) and its dual discriminator (the image and
the upsampled raw image, conditioned on the camera and the FLAME parameters, with a head that
regresses expression and jaw for the control loss)."""
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry.cameras import LABEL_SIZE
from ..render import OSGDecoder, Renderer
from ..render.decoder import ACTIVATIONS, FullyConnected
from ..runs import check_fields
from .networks import (
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    MappingNetwork,
    StyleGAN2Backbone,
    SuperResolution,
    SynthesisNetwork,
    channels_at,
    check_noise_mode,
    recomputed,
    setup_filter,
)


@dataclasses.dataclass
class GeneratorConfig:
    """Sizes of the generator; the defaults are EG3D's/OmniAvatar's (512-wide w, a 3 x 32 x 3 x
    256^2 tri-grid, a 32-channel feature image super-resolved to the dataset's resolution)."""
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2
    grid_resolution: int = 256
    grid_channels: int = 32
    triplane_depth: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    feature_channels: int = 32
    decoder_activation: str = "sigmoid"
    pose_noise: float = 0.0
    background: bool = False
    background_resolution: int = 64
    # the super-resolution blocks' widths; empty: EG3D's (128, 64), (256, 128) for 8XDC
    sr_channels: list = dataclasses.field(default_factory=list)
    sr_input_resolution: int = 0  # 0: EG3D's per module (64 for 128^2 images, 128 for 256^2 and 512^2)
    sr_noise: bool = False        # EG3D's superresolution_noise_mode 'none'
    # False: no super-resolution; the image is the rendered image at the image's resolution (the
    # SR-free presets), and the dual discriminator's raw input is that same image.
    superresolution: bool = True

    def __post_init__(self):
        check_fields(self, integers=[(name, 1) for name in ("z_dim", "w_dim", "mapping_layers", "grid_channels",
                                                            "triplane_depth", "channel_base", "channel_max",
                                                            "feature_channels")],
                     numbers=[("pose_noise", 0, True)], flags=("background", "sr_noise", "superresolution"))
        for name in ("grid_resolution", "background_resolution", "sr_input_resolution"):  # the backbones double
            value, eg3d = getattr(self, name), name == "sr_input_resolution"  # 0: EG3D's per module
            integer = isinstance(value, int) and not isinstance(value, bool)
            if not integer or not ((value >= 4 and not value & (value - 1)) or (eg3d and value == 0)):
                extra = "0 (EG3D's) or " if eg3d else ""
                raise ValueError(f"GeneratorConfig: {name} must be {extra}a power of two >= 4, got {value!r}")
        if not isinstance(self.sr_channels, (list, tuple)) or len(self.sr_channels) not in (0, 2) \
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.sr_channels):
            raise ValueError(f"GeneratorConfig: sr_channels must be empty (EG3D's) or two positive integers, "
                             f"got {self.sr_channels!r}")
        if self.decoder_activation not in ACTIVATIONS:
            raise ValueError(f"GeneratorConfig: decoder_activation must be one of {ACTIVATIONS}, "
                             f"got {self.decoder_activation!r}")


EG3D_SR_INPUT = {128: 64, 256: 128, 512: 128}


class Generator(nn.Module):
    """``G(z, c)``: labels ``c = [cam2world 16 | intrinsics 9 | FLAME P]``. The mapping network
    sees the camera only (OmniAvatar: ``c[:, :25]``); FLAME reaches the image through the warp
    (shape, expression, pose) and the decoder (expression and pose).

    Args:
        config: :class:`GeneratorConfig`; warp: the frozen stage I warp; render_config:
        :class:`omnifast.render.RenderConfig`; neural_resolution: the initial neural rendering
        resolution (the super-resolution module's input); image_resolution: the output's.
    """

    def __init__(self, config, warp, render_config, neural_resolution, image_resolution):
        super().__init__()
        c = self.config = config
        self.param_dim = warp.param_dim
        self.n_shape = warp.flame.layout.n_shape
        self.image_resolution = image_resolution
        self.neural_rendering_resolution = neural_resolution
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = \
            c.z_dim, LABEL_SIZE, c.w_dim, image_resolution, 3
        self.backbone = StyleGAN2Backbone(c.z_dim, LABEL_SIZE, c.w_dim, c.grid_resolution,
                                          3 * c.grid_channels * c.triplane_depth,
                                          mapping_kwargs=dict(layers=c.mapping_layers), channel_base=c.channel_base,
                                          channel_max=c.channel_max)
        # The super-resolution module's input size is fixed (the rendered image is resized to it),
        # so the neural rendering resolution may change during training.
        sr_input = c.sr_input_resolution or EG3D_SR_INPUT.get(image_resolution, neural_resolution)
        self.superresolution = (SuperResolution(c.feature_channels, sr_input, image_resolution, c.w_dim,
                                                widths=tuple(c.sr_channels) or None) if c.superresolution else None)
        self.decoder = OSGDecoder(c.grid_channels, pose_dim=self.param_dim - self.n_shape,
                                  out_features=c.feature_channels, activation=c.decoder_activation,
                                  pose_noise=c.pose_noise)
        with torch.no_grad():  # the correction starts at zero: the first images show the prior's head
            self.decoder.output.weight[0].zero_()
            self.decoder.output.bias[0].zero_()
        self.renderer = Renderer(warp, render_config)
        self.background = (SynthesisNetwork(c.w_dim, c.background_resolution, c.feature_channels,
                                            c.channel_base // 4, c.channel_max // 2) if c.background else None)
        if self.background is not None and self.background.num_ws > self.backbone.num_ws:
            raise ValueError(f"GeneratorConfig: the background ({c.background_resolution}^2) needs more ws "
                             f"({self.background.num_ws}) than the tri-grid's backbone makes "
                             f"({self.backbone.num_ws}); lower background_resolution")

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        """EG3D's ``G.mapping``: ``ws [N, num_ws, w_dim]`` for latents ``z [N, z_dim]`` and labels
        ``c`` (checked first: nothing, the tracked average w included, is touched by a bad
        input). The mapping sees the camera only (OmniAvatar: ``c[:, :25]``)."""
        self.renderer.split_labels(c)
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() != 2 \
                or z.shape != (c.shape[0], self.config.z_dim):
            got = f"{z.dtype} {list(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a floating-point [N, {self.config.z_dim}] tensor with the N of the labels "
                             f"({c.shape[0]}), got {got}")
        if z.dtype != c.dtype:
            raise ValueError(f"z and the labels must have one dtype, got {z.dtype} and {c.dtype}")
        check_truncation(truncation_psi, truncation_cutoff, self.backbone.num_ws)
        return self.backbone.mapping(z, c[:, :LABEL_SIZE], truncation_psi, truncation_cutoff,
                                     update_emas=update_emas)

    def planes(self, ws, noise_mode="random"):
        c = self.config
        out = self.backbone.synthesis(ws, noise_mode)
        return out.view(out.shape[0], 3, c.grid_channels, c.triplane_depth, *out.shape[-2:])

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, *, backend="omnifast",
                  noise_mode="random", generator=None):
        """EG3D's ``G.synthesis``: ``{image, image_raw, image_depth}`` (images in [-1, 1]: the
        super-resolved one and the raw one's RGB) and omnifast's ``opacity``, ``delta``,
        ``prior_sdf``, ``planes``. The renderer checks ``c``."""
        check_noise_mode(noise_mode)
        resolution = neural_rendering_resolution or self.neural_rendering_resolution
        planes = self.renderer.prepare(self.planes(ws, noise_mode), backend)  # shared with the regularisers
        out = self.renderer(planes, self.decoder, c, resolution, backend=backend, generator=generator)
        features = out.features
        if self.background is not None:
            background = self.background(ws[:, :self.background.num_ws], noise_mode)
            background = F.interpolate(background, size=features.shape[-2:], mode="bilinear", align_corners=False,
                                       antialias=True)
            features = features + (1 - out.opacity) * background
        if self.config.decoder_activation == "sigmoid":
            features = features * 2 - 1
        raw = features[:, :3]
        if self.superresolution is None:  # SR-free: the rendered image, resized only if rendered at another size
            image = raw if raw.shape[-1] == self.image_resolution else F.interpolate(
                raw, size=(self.image_resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        else:
            image = self.superresolution(raw, features, ws, noise_mode if self.config.sr_noise else "none")
        return {"image": image, "image_raw": raw, "image_depth": out.depth, "opacity": out.opacity,
                "delta": out.delta, "prior_sdf": out.prior_sdf, "planes": planes}

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, neural_rendering_resolution=None,
                update_emas=False, *, c_map=None, **kwargs):
        """EG3D's ``G(z, c)``: ``synthesis(mapping(z, c_map or c), c)``; ``c_map``: the labels the
        mapping sees (EG3D's pose-conditioning swap gives it another image's camera)."""
        ws = self.mapping(z, c if c_map is None else c_map, truncation_psi, truncation_cutoff, update_emas)
        return self.synthesis(ws, c, neural_rendering_resolution, update_emas, **kwargs)


def check_truncation(truncation_psi, truncation_cutoff, num_ws):
    if isinstance(truncation_psi, bool) or not isinstance(truncation_psi, (int, float)) \
            or not math.isfinite(truncation_psi) or abs(truncation_psi) > 1e3:
        raise ValueError(f"truncation_psi must be a finite number in [-1000, 1000], got {truncation_psi!r}")
    if truncation_cutoff is not None and (isinstance(truncation_cutoff, bool) or not isinstance(truncation_cutoff, int)
                                          or not 0 <= truncation_cutoff <= num_ws):
        raise ValueError(f"truncation_cutoff must be None or an integer in [0, {num_ws}], got {truncation_cutoff!r}")


class DualDiscriminator(nn.Module):
    """EG3D's ``DualDiscriminator`` on 6 channels (the image and the raw image resized to it
    with an antialiased bilinear filter): residual blocks ``b{resolution}`` down to 8^2, the
    epilogue ``b4``, and the label (camera and FLAME) through an 8-layer mapping at learning
    rate 0.01 for the projection; ``conv_clamp`` 256 as in EG3D. omnifast adds ``regress``, a
    head on the epilogue's last features that regresses expression and jaw (OmniAvatar's control
    loss; ``regress_dim`` 0: none, as in EG3D). With ``autocast`` the blocks run in bfloat16
    (EG3D: fp16 in its top layers), the epilogue in float32. ``disc_c_noise``: EG3D's Gaussian
    noise on the label, times the batch's standard deviation of each number. ``label_width``:
    read only the labels' first numbers (OmniAvatar's released D, given camera and FLAME). With
    ``recompute``, the first block (at the image's resolution) keeps only its input for the
    backward and runs again there."""
    autocast = False
    recompute = False
    disc_c_noise = 0.0
    label_width = None

    def __init__(self, resolution, c_dim, regress_dim, channel_base=32768, channel_max=512, cmap_dim=None,
                 mbstd_group=4, conv_clamp=256, mapping_layers=8, mapping_lr_mul=0.01):
        super().__init__()
        self.resolution, self.c_dim, self.mbstd_group = resolution, c_dim, mbstd_group
        self.block_resolutions = [2 ** i for i in range(int(math.log2(resolution)), 2, -1)]
        width = lambda r: channels_at(r, channel_base, channel_max)  # noqa: E731
        for r in self.block_resolutions:
            setattr(self, f"b{r}", DiscriminatorBlock(width(r) if r < resolution else 0, width(r), width(r // 2), r,
                                                      img_channels=6, conv_clamp=conv_clamp))
        self.cmap_dim = cmap_dim or width(4)
        self.mapping = MappingNetwork(0, c_dim, self.cmap_dim, None, layers=mapping_layers, lr_mul=mapping_lr_mul)
        self.b4 = DiscriminatorEpilogue(width(4), self.cmap_dim, mbstd_group_size=mbstd_group, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", setup_filter())
        self.regress = FullyConnected(width(4), regress_dim) if regress_dim else None

    def forward(self, image, image_raw, c=None):
        """``(logits [N], regressed expression and jaw [N, regress_dim] or None)``; EG3D's call
        ``D({'image': ..., 'image_raw': ...}, c)`` returns EG3D's logits ``[N, 1]``."""
        if isinstance(image, dict):
            return self.forward(image["image"], image["image_raw"], image_raw)[0][:, None]
        if self.label_width is not None:
            c = c[..., :self.label_width]
        if self.disc_c_noise > 0:
            c = c + torch.randn_like(c) * c.std(0) * self.disc_c_noise
        raw = F.interpolate(image_raw, size=image.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        x, img = None, torch.cat([image, raw], 1)
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            for r in self.block_resolutions:
                x = recomputed(getattr(self, f"b{r}"), self.recompute and r == self.resolution, x, img)
        with torch.autocast(image.device.type, enabled=False):
            h = self.b4.features(x)
            logits = self.b4(h, self.mapping(None, c))
        return logits[:, 0], (self.regress(h) if self.regress is not None else None)
