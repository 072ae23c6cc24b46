"""EG3D's ``TriPlaneGenerator`` on omnifast's kernels, with EG3D's constructor, attributes,
parameter names and interface (``mapping``, ``synthesis``, ``sample``, ``sample_mixed``,
``rendering_kwargs``, ``neural_rendering_resolution``), so a released EG3D network loaded by
:func:`omnifast.gan.load_network_pkl` runs a user's EG3D script unchanged: the tri-plane is
sampled with omnifast's kernel (EG3D's plane axes), the coarse and importance passes are
composited with the fused kernel, the importance depths drawn by the fused sampler; the random
draws are EG3D's (``rand_like`` of the coarse depths, then ``rand(rays, N_importance)``)."""
import math

import torch
from torch import nn

from ..eg3d import plane_axes_to_indices
from ..geometry.cameras import camera_rays
from ..ops.composite import composite, importance_sample, merge_samples
from ..ops.triplane import triplane_sample
from ..render.decoder import FullyConnected
from .models import check_truncation
from .networks import EG3D_SUPERRESOLUTION, NOISE_MODES, StyleGAN2Backbone, SuperResolution, check_noise_mode

# Keyword arguments of EG3D's networks that only choose speed or precision on a GPU (fp16
# layers, fused modulated convolutions, channels-last): accepted and ignored.
SPEED_ONLY = ("num_fp16_res", "fused_modconv_default", "fp16_channels_last", "force_fp32", "fused_modconv")
RENDERING_NEEDS = ("superresolution_module", "sr_antialias", "ray_start", "ray_end", "box_warp", "depth_resolution",
                   "depth_resolution_importance", "clamp_mode", "c_gen_conditioning_zero",
                   "superresolution_noise_mode")


def mapping_kwargs_of(kwargs, where):
    """EG3D's ``MappingNetwork`` keyword arguments as omnifast's."""
    kwargs = dict(kwargs or {})
    for name, allowed in (("embed_features", (None,)), ("layer_features", (None,)), ("activation", ("lrelu",))):
        if kwargs.pop(name, allowed[0]) not in allowed:
            raise ValueError(f"{where}: mapping_kwargs {name} must be {allowed[0]!r} (EG3D's), got other")
    renames = {"num_layers": "layers", "lr_multiplier": "lr_mul", "w_avg_beta": "w_avg_beta"}
    unknown = sorted(set(kwargs) - set(renames))
    if unknown:
        raise ValueError(f"{where}: unknown mapping_kwargs {unknown}")
    return {renames[k]: v for k, v in kwargs.items()}


def synthesis_kwargs_of(kwargs, where):
    kwargs = {k: v for k, v in kwargs.items() if k not in SPEED_ONLY}
    unknown = sorted(set(kwargs) - {"channel_base", "channel_max", "conv_clamp"})
    if unknown:
        raise ValueError(f"{where}: unknown synthesis arguments {unknown}")
    return kwargs


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_rendering_kwargs(k, per_axis_box=False):
    """EG3D's rendering settings omnifast renders with, each of its type and range
    (``per_axis_box``: ``box_warp`` may also be 3 numbers, as OmniAvatar allows)."""
    where = "TriPlaneGenerator: rendering_kwargs"
    if not (_number(k["ray_start"]) and _number(k["ray_end"]) and 0 <= k["ray_start"] < k["ray_end"]):
        raise ValueError(f"{where} ray_start and ray_end must be numbers with 0 <= ray_start < ray_end (omnifast "
                         f"does not support 'auto'), got {k['ray_start']!r} and {k['ray_end']!r}")
    box = k["box_warp"]
    boxes = box if per_axis_box and isinstance(box, (list, tuple)) and len(box) == 3 else [box]
    if not all(_number(b) and b > 0 for b in boxes):
        raise ValueError(f"{where} box_warp must be a positive number{' or 3 of them' if per_axis_box else ''}, "
                         f"got {box!r}")
    for key, low in (("depth_resolution", 2), ("depth_resolution_importance", 0)):
        value = k[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 4096:
            raise ValueError(f"{where} {key} must be an integer in [{low}, 4096], got {value!r}")
    if k["superresolution_noise_mode"] not in NOISE_MODES:
        raise ValueError(f"{where} superresolution_noise_mode must be one of {NOISE_MODES}, got "
                         f"{k['superresolution_noise_mode']!r}")
    for key in ("sr_antialias", "c_gen_conditioning_zero"):
        if not isinstance(k[key], bool):
            raise ValueError(f"{where} {key} must be True or False, got {k[key]!r}")
    for key in ("c_scale", "decoder_lr_mul", "density_noise"):
        if key in k and not _number(k[key]):
            raise ValueError(f"{where} {key} must be a finite number, got {k[key]!r}")


class OSGDecoder(nn.Module):
    """EG3D's ``OSGDecoder``: the mean of the three planes' features, ``net`` = FC(32, 64),
    softplus, FC(64, 1 + 32); colour ``sigmoid * 1.002 - 0.001``, the density raw."""

    def __init__(self, n_features, options):
        super().__init__()
        self.hidden_dim = 64
        lr = options["decoder_lr_mul"]
        self.net = nn.Sequential(FullyConnected(n_features, self.hidden_dim, lr), nn.Softplus(),
                                 FullyConnected(self.hidden_dim, 1 + options["decoder_output_dim"], lr))

    def decode(self, features):
        """``[N, M, C]`` plane-mean features -> ``{'rgb', 'sigma'}``."""
        x = self.net(features)
        return {"rgb": torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001, "sigma": x[..., 0:1]}

    def forward(self, sampled_features, ray_directions=None):
        """EG3D's call: ``[N, 3, M, C]`` features of each plane."""
        return self.decode(sampled_features.mean(1))


class ImportanceRenderer(nn.Module):
    """EG3D's ``ImportanceRenderer`` (``forward``, ``run_model``) on omnifast's kernels: stratified
    depths from ``ray_start`` to ``ray_end``, the coarse pass, importance depths from its
    weights, the fine pass, both merged and composited (midpoint, ``softplus(sigma - 1)``)."""

    scale_colors = True  # EG3D's marcher maps the composited colours to [-1, 1]

    def __init__(self, axes="eg3d"):
        super().__init__()
        self.axes = axes

    def run_model(self, planes, decoder, sample_coordinates, sample_directions, options):
        features = triplane_sample(planes, sample_coordinates.to(planes.dtype), box_warp=options["box_warp"],
                                   reduce="mean", axes=self.axes)
        out = decoder.decode(features)
        if options.get("density_noise", 0) > 0:
            out["sigma"] = out["sigma"] + torch.randn_like(out["sigma"]) * options["density_noise"]
        return out

    def _march(self, colors, densities, depths, options):
        out = composite(colors, densities, depths.to(colors.dtype), field_type="density", mode="midpoint",
                        white_back=options.get("white_back", False), return_weights=True)
        return (out.features * 2 - 1 if self.scale_colors else out.features), out.depth, out.weights

    def forward(self, planes, decoder, ray_origins, ray_directions, options, **model_kwargs):
        n, m, _ = ray_origins.shape
        start, end, count = options["ray_start"], options["ray_end"], options["depth_resolution"]
        det = options.get("det_sampling", False)  # OmniAvatar's: no jitter, evenly spaced importance draws
        # EG3D's draws: float32 depths jittered by rand_like, in this order before the importance draws
        depths = torch.linspace(start, end, count, device=ray_origins.device).reshape(1, 1, count, 1).repeat(n, m, 1, 1)
        if not det:
            depths = depths + torch.rand_like(depths) * ((end - start) / (count - 1))
        passes = [(depths.to(planes.dtype),
                   self._shade(planes, decoder, ray_origins, ray_directions, depths, options, model_kwargs))]
        extra = options["depth_resolution_importance"]
        if extra > 0:
            (coarse, (colors, sigmas)) = passes[0]
            _, _, weights = self._march(colors, sigmas, coarse, options)
            fine = importance_sample(coarse.detach(), weights.detach(), extra, deterministic=det)
            passes.append((fine, self._shade(planes, decoder, ray_origins, ray_directions, fine, options,
                                             model_kwargs)))
            depths, (colors, sigmas) = merge_samples(passes[0][0], fine, passes[0][1], passes[1][1])
        else:
            depths, (colors, sigmas) = passes[0]
        rgb, depth, weights = self._march(colors, sigmas, depths, options)
        return rgb, depth, weights.sum(2)

    def _shade(self, planes, decoder, origins, directions, depths, options, model_kwargs):
        n, m, s, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths.to(origins.dtype) * directions.unsqueeze(-2)).reshape(n, -1, 3)
        out = self.run_model(planes, decoder, points, None, options, **model_kwargs)
        return out["rgb"].reshape(n, m, s, -1), out["sigma"].reshape(n, m, s, 1)


class TriPlaneGenerator(nn.Module):
    """EG3D's ``TriPlaneGenerator``: the StyleGAN2 backbone emits three 32-channel 256^2 planes,
    the renderer composites a 32-channel feature image at ``neural_rendering_resolution``, EG3D's
    super-resolution module (``rendering_kwargs['superresolution_module']``) makes the image.
    ``G(z, c)`` returns ``{'image', 'image_raw', 'image_depth'}``; labels ``c`` are EG3D's 25
    numbers (cam2world 16, intrinsics 9)."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, sr_num_fp16_res=0, mapping_kwargs=None,
                 rendering_kwargs=None, sr_kwargs=None, **synthesis_kwargs):
        super().__init__()
        rendering_kwargs = dict(rendering_kwargs or {})
        missing = [k for k in RENDERING_NEEDS if k not in rendering_kwargs]
        if missing:
            raise ValueError(f"TriPlaneGenerator: rendering_kwargs lacks {missing}")
        for key, allowed in (("clamp_mode", ("softplus",)), ("disparity_space_sampling", (False,))):
            if rendering_kwargs.get(key, allowed[0]) not in allowed:
                raise ValueError(f"TriPlaneGenerator: rendering_kwargs {key} must be {allowed[0]!r}, got "
                                 f"{rendering_kwargs[key]!r}")
        check_rendering_kwargs(rendering_kwargs, per_axis_box=self.per_axis_box)
        module = str(rendering_kwargs["superresolution_module"]).rsplit(".", 1)[-1]
        if module not in EG3D_SUPERRESOLUTION:
            raise ValueError(f"TriPlaneGenerator: superresolution_module must be one of "
                             f"{sorted(EG3D_SUPERRESOLUTION)}, got {rendering_kwargs['superresolution_module']!r}")
        sr_input, sr_output, widths = EG3D_SUPERRESOLUTION[module]
        if img_resolution != sr_output:
            raise ValueError(f"TriPlaneGenerator: {module} makes {sr_output}^2 images, img_resolution is "
                             f"{img_resolution}")
        if img_channels != 3 or w_dim != 512:
            raise ValueError(f"TriPlaneGenerator: EG3D's super-resolution needs img_channels 3 and w_dim 512, got "
                             f"{img_channels} and {w_dim}")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis_kwargs = synthesis_kwargs_of(synthesis_kwargs, "TriPlaneGenerator")
        self.renderer = self.make_renderer(rendering_kwargs)
        self.backbone = StyleGAN2Backbone(z_dim, c_dim, w_dim, 256, 32 * 3 * self.volume_depth(rendering_kwargs),
                                          mapping_kwargs=mapping_kwargs_of(mapping_kwargs, "TriPlaneGenerator"),
                                          **self.synthesis_kwargs)
        sr_extra = synthesis_kwargs_of({k: v for k, v in (sr_kwargs or {}).items()
                                        if k not in ("channel_base", "channel_max", "conv_clamp")}, "superresolution")
        if sr_extra:
            raise ValueError(f"TriPlaneGenerator: unknown sr_kwargs {sorted(sr_extra)}")
        self.superresolution = SuperResolution(32, sr_input, sr_output, w_dim, widths,
                                               conv_clamp=256 if sr_num_fp16_res > 0 else None,
                                               antialias=rendering_kwargs["sr_antialias"])
        self.decoder = self.make_decoder(rendering_kwargs)
        self.neural_rendering_resolution = 64
        self.rendering_kwargs = rendering_kwargs

    per_axis_box = False  # EG3D's box_warp is one number

    @staticmethod
    def volume_depth(rendering_kwargs):
        """Depth slices of each of the three feature grids: EG3D's are planes."""
        return 1

    def make_renderer(self, rendering_kwargs):
        return ImportanceRenderer()

    def make_decoder(self, rendering_kwargs):
        return OSGDecoder(32, {"decoder_lr_mul": rendering_kwargs.get("decoder_lr_mul", 1), "decoder_output_dim": 32})

    def set_plane_axes(self, plane_axes):
        """Use a released renderer's plane matrices (EG3D's or the fixed branch's permutations)."""
        axes = plane_axes_to_indices(plane_axes)
        if axes is None:
            raise ValueError("TriPlaneGenerator: the renderer's plane_axes must be three 3 x 3 permutation matrices")
        self.renderer.axes = axes

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        check_truncation(truncation_psi, truncation_cutoff, self.backbone.num_ws)
        if self.rendering_kwargs["c_gen_conditioning_zero"]:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.rendering_kwargs.get("c_scale", 0), truncation_psi,
                                     truncation_cutoff, update_emas=update_emas)

    def planes(self, ws, noise_mode="random"):
        planes = self.backbone.synthesis(ws, noise_mode)
        return planes.view(len(planes), 3, 32, planes.shape[-2], planes.shape[-1])

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, cache_backbone=False,
                  use_cached_backbone=False, noise_mode="random", **synthesis_kwargs):
        synthesis_kwargs_of(synthesis_kwargs, "TriPlaneGenerator.synthesis")
        feature_image, depth_image, _ = self.render(ws, c, neural_rendering_resolution, cache_backbone,
                                                    use_cached_backbone, noise_mode)
        image, rgb = self.superresolve(feature_image[:, :3], feature_image, ws)
        return {"image": image, "image_raw": rgb, "image_depth": depth_image}

    def render(self, ws, c, neural_rendering_resolution, cache_backbone, use_cached_backbone, noise_mode,
               **model_kwargs):
        """The neural rendering: ``(feature image, depth image, opacity image)``, ``[N, ., R, R]``."""
        check_noise_mode(noise_mode)
        if neural_rendering_resolution is None:
            neural_rendering_resolution = self.neural_rendering_resolution
        else:  # as EG3D: the last resolution asked for becomes the default
            self.neural_rendering_resolution = neural_rendering_resolution
        origins, directions = camera_rays(c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3),
                                          neural_rendering_resolution)
        n, r = origins.shape[0], neural_rendering_resolution
        cached = getattr(self, "_last_planes", None)
        planes = cached if use_cached_backbone and cached is not None else self.planes(ws, noise_mode)
        if cache_backbone:
            self._last_planes = planes
        features, depth, opacity = self.renderer(planes, self.decoder, origins, directions, self.rendering_kwargs,
                                                 **model_kwargs)
        image = lambda t: t.permute(0, 2, 1).reshape(n, t.shape[-1], r, r)  # noqa: E731
        return image(features).contiguous(), image(depth), image(opacity)

    def superresolve(self, rgb, feature_image, ws):
        """``(image, image_raw)``."""
        sr, noise = self.superresolution, self.rendering_kwargs["superresolution_noise_mode"]
        if not sr.block0.up and rgb.shape[-1] == sr.input_resolution:
            # EG3D's SynthesisBlockNoUp (2X, 4X) adds its torgb into the image branch in place; with
            # no resize that is the raw image itself, so EG3D returns (and D sees) the sum as image_raw.
            return sr(rgb, feature_image, ws, noise, with_first=True)
        return sr(rgb, feature_image, ws, noise), rgb

    def sample(self, coordinates, directions, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False,
               noise_mode="random", **synthesis_kwargs):
        """Colour features and raw density at points ``[N, M, 3]`` (EG3D's shape extraction)."""
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas)
        return self.sample_mixed(coordinates, directions, ws, noise_mode=noise_mode, **synthesis_kwargs)

    def sample_mixed(self, coordinates, directions, ws, truncation_psi=1, truncation_cutoff=None, update_emas=False,
                     noise_mode="random", **synthesis_kwargs):
        synthesis_kwargs_of(synthesis_kwargs, "TriPlaneGenerator.sample_mixed")
        return self.renderer.run_model(self.planes(ws, noise_mode), self.decoder, coordinates, directions,
                                       self.rendering_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, neural_rendering_resolution=None,
                update_emas=False, noise_mode="random", **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas)
        return self.synthesis(ws, c, neural_rendering_resolution, update_emas, noise_mode=noise_mode,
                              **synthesis_kwargs)

