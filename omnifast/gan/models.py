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
from ..render.decoder import FullyConnected
from .networks import DiscriminatorBlock, MappingNetwork, SuperResolution, SynthesisNetwork, channels_at, lrelu


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
    sr_channel_base: int = 32768
    sr_channel_max: int = 512


def _flat(x):
    return x.reshape(x.shape[0], -1)


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
        self.backbone = SynthesisNetwork(c.w_dim, c.grid_resolution, 3 * c.grid_channels * c.triplane_depth,
                                         c.channel_base, c.channel_max)
        self.superresolution = SuperResolution(c.feature_channels, neural_resolution, image_resolution, c.w_dim,
                                               channel_base=c.sr_channel_base, channel_max=c.sr_channel_max)
        num_ws = self.backbone.num_ws + 1  # the last w drives the super-resolution module
        self.mapping = MappingNetwork(c.z_dim, LABEL_SIZE, c.w_dim, num_ws, c.mapping_layers)
        self.decoder = OSGDecoder(c.grid_channels, pose_dim=self.param_dim - self.n_shape,
                                  out_features=c.feature_channels, activation=c.decoder_activation,
                                  pose_noise=c.pose_noise)
        with torch.no_grad():  # the correction starts at zero: the first images show the prior's head
            self.decoder.output.weight[0].zero_()
            self.decoder.output.bias[0].zero_()
        self.renderer = Renderer(warp, render_config)
        self.background = (SynthesisNetwork(c.w_dim, c.background_resolution, c.feature_channels,
                                            c.channel_base // 4, c.channel_max // 2) if c.background else None)

    def map(self, z, c, truncation_psi=1.0, update_w_avg=False):
        return self.mapping(z, c[:, :LABEL_SIZE], truncation_psi, update_w_avg)

    def planes(self, ws, noise_mode="random"):
        c = self.config
        out = self.backbone(ws[:, :self.backbone.num_ws], noise_mode)
        return out.view(out.shape[0], 3, c.grid_channels, c.triplane_depth, *out.shape[-2:])

    def synthesis(self, ws, c, *, neural_rendering_resolution=None, backend="omnifast", noise_mode="random",
                  generator=None):
        """``{image, image_raw, image_depth, opacity, delta, prior_sdf, planes}``: images in
        [-1, 1] (the super-resolved one and the raw one's RGB)."""
        self.renderer.split_labels(c)  # wrong labels fail before any work
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
        image = self.superresolution(raw, features, ws, noise_mode)
        return {"image": image, "image_raw": raw, "image_depth": out.depth, "opacity": out.opacity,
                "delta": out.delta, "prior_sdf": out.prior_sdf, "planes": planes}

    def forward(self, z, c, truncation_psi=1.0, *, c_map=None, update_w_avg=False, **kwargs):
        """``synthesis(map(z, c_map or c), c)``; ``c_map``: the labels the mapping sees (EG3D's
        pose-conditioning swap gives it another image's camera)."""
        ws = self.map(z, c if c_map is None else c_map, truncation_psi, update_w_avg)
        return self.synthesis(ws, c, **kwargs)


class DualDiscriminator(nn.Module):
    """EG3D's dual discriminator on 6 channels (the image and the raw image upsampled with an
    antialiased bilinear filter), conditioned by projection on the full label (camera and
    FLAME), with a regression head for expression and jaw (OmniAvatar's control loss). With
    ``autocast`` it runs in bfloat16 (EG3D: fp16 in its top layers), answering in float32."""
    autocast = False

    def __init__(self, resolution, c_dim, regress_dim, channel_base=32768, channel_max=512, cmap_dim=None,
                 mbstd_group=4):
        super().__init__()
        self.resolution, self.c_dim, self.mbstd_group = resolution, c_dim, mbstd_group
        resolutions = [2 ** i for i in range(int(math.log2(resolution)), 2, -1)]
        width = lambda r: channels_at(r, channel_base, channel_max)  # noqa: E731
        self.blocks = nn.ModuleList(DiscriminatorBlock(width(r), width(r // 2), img_channels=6 if i == 0 else 0)
                                    for i, r in enumerate(resolutions))
        top = channels_at(4, channel_base, channel_max)
        self.cmap_dim = cmap_dim or top
        self.mapping = MappingNetwork(0, c_dim, self.cmap_dim, 1, layers=2, lr_mul=1.0)
        self.conv = nn.Conv2d(top + 1, top, 3, padding=1)
        self.fc = FullyConnected(top * 16, top)
        self.out = FullyConnected(top, self.cmap_dim)
        self.regress = FullyConnected(top, regress_dim)

    def _minibatch_std(self, x):
        n = x.shape[0]
        g = math.gcd(min(self.mbstd_group, n), n)
        y = x.reshape(g, -1, *x.shape[1:])
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean([1, 2, 3])
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, *x.shape[2:])
        return torch.cat([x, y], 1)

    def forward(self, image, image_raw, c):
        """``(logits [N], regressed expression and jaw [N, regress_dim])``."""
        raw = F.interpolate(image_raw, size=image.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        x, img = None, torch.cat([image, raw], 1)
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            for i, block in enumerate(self.blocks):
                x = block(x, img if i == 0 else None)
            x = lrelu(self.conv(self._minibatch_std(x)))
            h = lrelu(self.fc(_flat(x)))
        h = h.float()
        cmap = self.mapping(None, c)[:, 0]
        logits = (self.out(h) * cmap).sum(1) / math.sqrt(self.cmap_dim)
        return logits, self.regress(h)
