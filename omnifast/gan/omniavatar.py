"""OmniAvatar's released generator (its ``training.triplane.TriPlaneGenerator``) on omnifast's
kernels, with its constructor, parameter names and interface, so ``omniavatar.pkl`` loaded by
:func:`omnifast.gan.load_network_pkl` gives OmniAvatar's images.

What differs from EG3D's generator: the backbone emits three 32-channel volumes of depth
``triplane_depth`` (channel = volume, feature, depth slice), sampled trilinearly on OmniAvatar's
axes (x y z, y z x, x z y); each ray sample is first warped to canonical space by the frozen IGR
network ``renderer.im3dmm`` (point and FLAME parameters -> prior signed distance and canonical
point; outside its box the identity and a 4.5 cm sphere); the decoder adds an embedding of the
pose parameters; the density is ``sigmoid(-s / beta) / beta`` of the prior plus the decoder's
(``delta_geom``) before EG3D's ``softplus(sigma - 1)``; the marcher leaves colours in [0, 1] and
the generator maps them to [-1, 1] after adding the optional background network's image; an
optional ``torgb`` makes the raw image. Labels are EG3D's 25 numbers then the FLAME parameters,
the last ``feature_dim`` numbers (OmniAvatar: shape 100, expression 100, neck 3, jaw 3); the
mapping network reads the first ``c_dim``. The released ``with_sdf`` path is not supported (its
2-D sampler cannot read volumes)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.triplane import triplane_sample
from ..render.decoder import FullyConnected, activate_colour
from .networks import SynthesisNetwork, ToRGBLayer
from .triplane import ImportanceRenderer, TriPlaneGenerator, synthesis_kwargs_of

POSE_DIM = 106  # OmniAvatar's decoder reads the last 106 numbers: expression, neck, jaw
OMNIAVATAR_NEEDS = ("triplane_depth", "with_sdf", "delta_geom", "decoder_activation", "pose_perturb_magtinude")


class IGRModel(nn.Module):
    """OmniAvatar's ``IGRModel`` (``training.im3dmm_network``): inputs ``[q, sin(pi q), cos(pi q),
    features]`` of the point ``q`` scaled into the box ``bbox`` ([[min], [max]]), ``fc{l}``
    linear layers with SiLU between them, the inputs concatenated again (divided by sqrt 2)
    before the layers in ``skip_connection_layers``. With a ``template_sdf`` its last three
    outputs (the canonical point) return from box units to world units."""

    def __init__(self, intermediate_dims, skip_connection_layers, bbox, feature_dim=0, output_dim=1,
                 template_sdf=None):
        super().__init__()
        dims = [9 + feature_dim, *intermediate_dims, output_dim]
        self.skip_connection_layers = tuple(int(i) for i in skip_connection_layers)
        self.feature_dim, self.output_dim, self.layers = feature_dim, output_dim, len(dims) - 1
        bbox = torch.as_tensor(bbox, dtype=torch.float32)
        if bbox.shape != (2, 3) or not bool((bbox[1] > bbox[0]).all()):
            raise ValueError(f"IGRModel: bbox must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with min < max, "
                             f"got {bbox.tolist()}")
        # OmniAvatar's plain float32 tensors (not in its state dict), computed as it does
        for name, value in (("bbox_center", 0.5 * (bbox[0] + bbox[1])), ("edge", 0.5 * (bbox[1] - bbox[0])),
                            ("inv_edge_scaling", 2.0 / (bbox[1] - bbox[0]))):
            self.register_buffer(name, value.double(), persistent=False)
        self._template_sdf = template_sdf
        for layer in range(self.layers):
            extra = dims[0] if layer in self.skip_connection_layers else 0
            setattr(self, f"fc{layer}", nn.Linear(dims[layer] + extra, dims[layer + 1]))

    def run_mlp(self, q, features):
        embed = torch.cat([q, torch.sin(math.pi * q), torch.cos(math.pi * q), features], -1)
        x = embed
        for layer in range(self.layers):
            if layer in self.skip_connection_layers:
                x = torch.cat([x, embed], -1) / math.sqrt(2)
            x = getattr(self, f"fc{layer}")(x)
            if layer < self.layers - 1:
                x = F.silu(x)
        if self._template_sdf is not None:
            x = torch.cat([x[..., :-3], x[..., -3:] * self.edge.to(x.dtype) + self.bbox_center.to(x.dtype)], -1)
        return x

    def warp(self, points, features):
        """``[..., 3]`` world points and ``[..., feature_dim]`` FLAME parameters -> ``[..., 4]``
        (prior signed distance, canonical point)."""
        q = (points - self.bbox_center.to(points.dtype)) * self.inv_edge_scaling.to(points.dtype)
        inside = ((q <= 1) & (q >= -1)).all(-1)
        out = torch.cat([points.norm(dim=-1, keepdim=True) - 0.045, points], -1)
        out[inside] = self.run_mlp(q[inside], features[inside]).to(out.dtype)
        return out


class PoseDecoder(nn.Module):
    """OmniAvatar's ``OSGDecoder``: ``pose_net`` = FC(P, 32) + softplus of the pose parameters
    (``[sin(pi p), cos(pi p), p]`` with ``pose_embed``), concatenated after the mean of the three
    volumes' features, then ``sigma_net`` = FC(64, 64), softplus, FC(64, 33); density raw, colour
    through ``decoder_activation``. As OmniAvatar, the pose perturbation is drawn on every call
    (three normal draws, times ``pose_perturb_magtinude``; the neck's times a fifth of it)."""

    def __init__(self, n_features, options, n_pose_features=0):
        super().__init__()
        lr = options["decoder_lr_mul"]
        self.n_pose_features, self.pose_embed = n_pose_features, bool(options.get("pose_embed", False))
        self.activation = options.get("decoder_activation") or "sigmoid"
        self.pose_perturb_magtinude = float(options.get("pose_perturb_magtinude", 0))
        width = n_features if n_pose_features else 0
        if n_pose_features:
            self.pose_net = nn.Sequential(FullyConnected(n_pose_features * (3 if self.pose_embed else 1), n_features,
                                                         lr), nn.Softplus())
        else:
            self.pose_net = None
        self.sigma_net = nn.Sequential(FullyConnected(n_features + width, 64, lr), nn.Softplus(),
                                       FullyConnected(64, 1 + options["decoder_output_dim"], lr))

    def decode(self, features, pose=None):
        """``[N, M, C]`` volume-mean features, ``[N, F]`` FLAME parameters -> ``{'rgb', 'sigma'}``."""
        n, m, _ = features.shape
        x = features
        if self.pose_net is not None:
            p = pose[:, None, -self.n_pose_features:]
            scale = self.pose_perturb_magtinude
            noise = torch.cat([torch.randn_like(p[..., :100]) * scale, torch.randn_like(p[..., 100:103]) * scale * 0.2,
                               torch.randn_like(p[..., 103:]) * scale], -1)
            p = (p + noise)[:, 0]
            if self.pose_embed:
                p = torch.cat([torch.sin(math.pi * p), torch.cos(math.pi * p), p], -1)
            x = torch.cat([x, self.pose_net(p)[:, None].expand(n, m, -1)], -1)
        out = self.sigma_net(x)
        return {"rgb": activate_colour(out[..., 1:], self.activation), "sigma": out[..., :1]}


class WarpRenderer(ImportanceRenderer):
    """OmniAvatar's ``ImportanceRenderer``: EG3D's passes; each sample warped by ``im3dmm``
    (without gradients) before the volumes are read, the prior's density added (``delta_geom``);
    colours composited in [0, 1]."""
    scale_colors = False

    def __init__(self, options, im3dmm=None, template_sdf=None):
        super().__init__(axes="omniavatar")
        self.delta_geom = bool(options["delta_geom"])
        self.template_sdf, self.im3dmm = template_sdf, im3dmm
        if im3dmm is not None:
            self.sigmoid_beta = nn.Parameter(torch.full([1], 1e-3))

    def run_model(self, planes, decoder, sample_coordinates, sample_directions, options, features_3dmm=None):
        prior = pose = None
        if self.im3dmm is not None and features_3dmm is not None and features_3dmm.shape[-1] != 0:
            pose = features_3dmm
            with torch.no_grad():
                features = features_3dmm[:, None].expand(-1, sample_coordinates.shape[1], -1)
                warped = self.im3dmm.warp(sample_coordinates, features)
            prior, sample_coordinates = warped[..., :1], warped[..., 1:]
        features = triplane_sample(planes, sample_coordinates.to(planes.dtype), box_warp=options["box_warp"],
                                   reduce="mean", axes=self.axes)
        out = decoder.decode(features, pose)
        if prior is not None and self.delta_geom:
            beta = self.sigmoid_beta.to(out["sigma"].dtype)
            out["sigma"] = torch.sigmoid(-prior.to(beta.dtype) / beta) / beta + out["sigma"]
        if options.get("density_noise", 0) > 0:
            out["sigma"] = out["sigma"] + torch.randn_like(out["sigma"]) * options["density_noise"]
        return out


def _check(rendering_kwargs):
    k = rendering_kwargs
    missing = [key for key in OMNIAVATAR_NEEDS if key not in k]
    if missing:
        raise ValueError(f"OmniAvatar's TriPlaneGenerator: rendering_kwargs lacks {missing}")
    depth = k["triplane_depth"]
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 256:
        raise ValueError(f"OmniAvatar's TriPlaneGenerator: triplane_depth must be an integer in [1, 256], got "
                         f"{depth!r}")
    for key in ("with_sdf", "absorption", "force_background"):
        if k.get(key, False):
            raise ValueError(f"OmniAvatar's TriPlaneGenerator: rendering_kwargs {key} must be False (omnifast renders "
                             f"the released density path), got {k[key]!r}")
    if k["decoder_activation"] not in ("sigmoid", "lrelu", "none", False, None):
        raise ValueError(f"OmniAvatar's TriPlaneGenerator: decoder_activation must be 'sigmoid', 'lrelu' or 'none', "
                         f"got {k['decoder_activation']!r}")
    if k.get("im3dmm_path") and ("bbox" not in k or "intermediate_dims" not in k or "skip_connection_layers" not in k):
        raise ValueError("OmniAvatar's TriPlaneGenerator: its warp network needs rendering_kwargs bbox, "
                         "intermediate_dims and skip_connection_layers")


class OmniAvatarGenerator(TriPlaneGenerator):
    """OmniAvatar's ``TriPlaneGenerator`` (same constructor). ``G(z, c)`` returns ``{'image',
    'image_raw', 'image_depth', 'image_mask'}`` for labels ``c`` = cam2world 16, intrinsics 9,
    then the FLAME parameters."""

    per_axis_box = True

    @staticmethod
    def volume_depth(rendering_kwargs):
        return rendering_kwargs["triplane_depth"]

    def make_renderer(self, k):
        _check(k)
        im3dmm = template = None
        if k.get("template_sdf_path"):
            template = IGRModel(list(k.get("template_intermediate_dims", [])), k["skip_connection_layers"], k["bbox"],
                                0, 1)
        if k.get("im3dmm_path"):
            im3dmm = IGRModel(list(k["intermediate_dims"]), k["skip_connection_layers"], k["bbox"],
                              k.get("feature_dim", 206), 4, template)
        self.feature_dim = k.get("feature_dim", 206) if im3dmm is not None else 0
        self.pose_dim = POSE_DIM if im3dmm is not None else 0
        return WarpRenderer(k, im3dmm, template)

    def make_decoder(self, k):
        self.decoder = PoseDecoder(32, {"decoder_lr_mul": k.get("decoder_lr_mul", 1), "decoder_output_dim": 32,
                                        "decoder_activation": k["decoder_activation"],
                                        "pose_perturb_magtinude": k["pose_perturb_magtinude"],
                                        "pose_embed": k.get("pose_embed", False)}, self.pose_dim)
        # the optional parts, registered after the decoder as OmniAvatar's constructor does
        if k.get("use_background", False):
            kwargs = dict(self.synthesis_kwargs)
            kwargs["channel_base"] = kwargs["channel_base"] // 2
            self.bcg_synthesis = SynthesisNetwork(self.w_dim, self.superresolution.input_resolution, 32, **kwargs)
        else:
            self.bcg_synthesis = None
        self.torgb = ToRGBLayer(32, 3, self.w_dim) if k.get("with_torgb", False) else None
        return self.decoder

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        return super().mapping(z, c[..., :self.c_dim], truncation_psi, truncation_cutoff, update_emas)

    def planes(self, ws, noise_mode="random"):
        planes = self.backbone.synthesis(ws, noise_mode)
        return planes.view(len(planes), 3, 32, self.volume_depth(self.rendering_kwargs), *planes.shape[-2:])

    def flame(self, c):
        """The FLAME parameters of labels ``c``: their last ``feature_dim`` numbers (None without a warp)."""
        return c[..., c.shape[-1] - self.feature_dim:] if self.feature_dim else None

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, cache_backbone=False,
                  use_cached_backbone=False, noise_mode="random", **synthesis_kwargs):
        synthesis_kwargs_of(synthesis_kwargs, "TriPlaneGenerator.synthesis")
        feature_image, depth_image, opacity = self.render(ws, c, neural_rendering_resolution, cache_backbone,
                                                          use_cached_backbone, noise_mode, features_3dmm=self.flame(c))
        if self.bcg_synthesis is not None:
            background = self.bcg_synthesis(ws[:, :self.bcg_synthesis.num_ws], noise_mode)
            background = F.interpolate(background, size=feature_image.shape[2:], mode="bilinear", align_corners=False,
                                       antialias=self.rendering_kwargs["sr_antialias"])
            feature_image = feature_image + (1 - opacity) * background
        if self.decoder.activation == "sigmoid":
            feature_image = feature_image * 2 - 1
        rgb = self.torgb(feature_image, ws[:, -1]) if self.torgb is not None else feature_image[:, :3]
        image, rgb = self.superresolve(rgb, feature_image, ws)
        return {"image": image, "image_raw": rgb, "image_depth": depth_image,
                "image_mask": opacity * (1 + 2 * 0.001) - 0.001}

    def sample(self, coordinates, directions, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False,
               noise_mode="random", **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas)
        return self.sample_mixed(coordinates, directions, ws, noise_mode=noise_mode, features_3dmm=self.flame(c),
                                 **synthesis_kwargs)

    def sample_mixed(self, coordinates, directions, ws, truncation_psi=1, truncation_cutoff=None, update_emas=False,
                     noise_mode="random", features_3dmm=None, **synthesis_kwargs):
        synthesis_kwargs_of(synthesis_kwargs, "TriPlaneGenerator.sample_mixed")
        if features_3dmm is None and self.feature_dim:  # OmniAvatar's default: the mean face
            features_3dmm = torch.zeros(len(coordinates), self.feature_dim, dtype=coordinates.dtype,
                                        device=coordinates.device)
        return self.renderer.run_model(self.planes(ws, noise_mode), self.decoder, coordinates, directions,
                                       self.rendering_kwargs, features_3dmm=features_3dmm)
