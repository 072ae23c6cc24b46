"""OmniAvatar's released generator layout, re-implemented locally from its semantics: `TriPlaneGenerator`
and `OSGDecoder` of its `training/triplane.py`, `IGRModel` of `training/im3dmm_network.py` and its
`ImportanceRenderer` (the warp to canonical space, the volumes read with `F.grid_sample`, the density
prior), on top of `eg3d_networks_local`'s StyleGAN2 layers, super-resolution modules and dual
discriminator. Plain PyTorch, OmniAvatar's class names, constructor signatures and parameter names.

It is the oracle for omnifast's import of `omniavatar.pkl`: `build_networks` makes G, D and G_ema as
a training script would (random values in every tensor), `dump_snapshot` pickles them in the format of
`torch_utils.persistence`."""
import copy
import math

import eg3d_networks_local as eg3d
import numpy as np
import torch
import torch.nn.functional as F
from eg3d_networks_local import EasyDict, FullyConnectedLayer, Generator, SynthesisNetwork, ToRGBLayer

import eg3d_local


class IGRModel(torch.nn.Module):
    """`training.im3dmm_network.IGRModel` (SiLU, warping outputs only)."""

    def __init__(self, intermediate_dims, skip_connection_layers, bbox, feature_dim=0, output_dim=1,
                 geometric_init=True, radius_init=1, activation_func='swish', template_sdf=None):
        super().__init__()
        self._skip_connection_layers = skip_connection_layers
        self._feature_dim, self._output_dim, self._embedding_dim = feature_dim, output_dim, 9
        dims = [9 + feature_dim] + intermediate_dims + [output_dim]
        self._num_layers = len(dims)
        bbmin, bbmax = bbox
        self._bbox_center = 0.5 * (bbmin + bbmax)
        self._edge = 0.5 * (bbmax - bbmin)
        self._inv_edge_scaling = 2.0 / (bbmax - bbmin)
        self._template_sdf = template_sdf
        self._activation = torch.nn.SiLU()
        for layer in range(self._num_layers - 1):
            extra = 9 + feature_dim if layer in skip_connection_layers else 0
            setattr(self, f'fc{layer}', torch.nn.Linear(dims[layer] + extra, dims[layer + 1]))

    def run_mlp(self, points, features):
        embed = torch.cat([points, torch.sin(torch.pi * points), torch.cos(torch.pi * points), features], -1)
        x = embed
        for layer in range(self._num_layers - 1):
            if layer in self._skip_connection_layers:
                x = torch.cat([x, embed], -1) / np.sqrt(2.)
            x = getattr(self, f'fc{layer}')(x)
            if layer < self._num_layers - 2:
                x = self._activation(x)
        if self._template_sdf is not None:
            x[..., -3:] = x[..., -3:] * self._edge + self._bbox_center
        return x

    def forward(self, points, features):
        """[prior distance, canonical point] of each point (OmniAvatar's `return_warping_only`)."""
        scaled = (points - self._bbox_center) * self._inv_edge_scaling
        inside = torch.sum((scaled <= 1).float() + (scaled >= -1).float(), -1) == 6
        x = torch.cat([torch.norm(points, dim=-1, keepdim=True) - 0.045, points], -1)
        x[inside] = self.run_mlp(scaled[inside], features[inside])
        return x


class OSGDecoder(torch.nn.Module):
    """OmniAvatar's `training.triplane.OSGDecoder`: pose embedding, `sigma_net`."""

    def __init__(self, n_features, options, n_pose_features=0):
        super().__init__()
        self.hidden_dim = 64
        self.n_pose_features = n_pose_features
        lr = options['decoder_lr_mul']
        if n_pose_features > 0:
            self.pose_embed = options.get('pose_embed', False)
            width = 3 * n_pose_features if self.pose_embed else n_pose_features
            self.pose_net = torch.nn.Sequential(FullyConnectedLayer(width, n_features, lr_multiplier=lr),
                                                torch.nn.Softplus())
        else:
            self.pose_net = None
        self.sigma_net = torch.nn.Sequential(
            FullyConnectedLayer(n_features * (2 if self.pose_net is not None else 1), self.hidden_dim, lr_multiplier=lr),
            torch.nn.Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + options['decoder_output_dim'], lr_multiplier=lr))
        self.activation = options.get('decoder_activation') or 'sigmoid'
        self.pose_perturb_magtinude = options.get('pose_perturb_magtinude', 0)

    def forward(self, sampled_features, sampled_poses):
        x = sampled_features.mean(1)
        n, m, c = x.shape
        x = x.reshape(n * m, c)
        if self.pose_net is not None:
            poses = sampled_poses[..., :1, -self.n_pose_features:]  # a view: the noise lands in place
            magnitude = self.pose_perturb_magtinude
            poses[..., :100] += torch.randn_like(poses[:, :1, :100]) * magnitude
            poses[..., 100:103] += torch.randn_like(poses[:, :1, 100:103]) * magnitude * 0.2
            poses[..., 103:] += torch.randn_like(poses[:, :1, 103:]) * magnitude
            poses = poses.reshape(n, -1)
            if self.pose_embed:
                poses = torch.cat([torch.sin(torch.pi * poses), torch.cos(torch.pi * poses), poses], -1)
            x = torch.cat([x, self.pose_net(poses).repeat_interleave(m, 0)], -1)
        out = self.sigma_net(x).reshape(n, m, -1)
        rgb = out[..., 1:]
        if self.activation == 'sigmoid':
            rgb = torch.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        elif self.activation == 'lrelu':
            rgb = F.leaky_relu(rgb, 0.2) * math.sqrt(2)
        return {'rgb': rgb, 'sigma': out[..., :1]}


def sample_from_volplanes(vol_planes, coordinates, box_warp, depth):
    """The three volumes read trilinearly at their axes (x y z), (y z x), (x z y): grid_sample,
    align_corners False, zeros outside; [N, 3, M, C]."""
    n, _, channels_depth, h, w = vol_planes.shape
    m = coordinates.shape[1]
    volumes = vol_planes.reshape(n * 3, channels_depth // depth, depth, h, w)
    coordinates = coordinates * (2 / torch.tensor(box_warp, dtype=coordinates.dtype))
    x, y, z = coordinates.unbind(-1)
    grid = torch.stack([torch.stack(axes, -1) for axes in ((x, y, z), (y, z, x), (x, z, y))], 1)
    out = F.grid_sample(volumes, grid.reshape(n * 3, 1, 1, m, 3), mode='bilinear', padding_mode='zeros',
                        align_corners=False)
    return out.reshape(n, 3, -1, m).permute(0, 1, 3, 2)


class MipRayMarcher2(eg3d_local.MipRayMarcher2):
    scale_colors = False


class ImportanceRenderer(eg3d_local.ImportanceRenderer):
    """OmniAvatar's renderer, its released path (`with_sdf` False)."""

    def __init__(self, rendering_kwargs):
        torch.nn.Module.__init__(self)
        self.ray_marcher = MipRayMarcher2()
        self.plane_axes = eg3d_local.generate_planes()
        self.with_sdf, self.delta_geom = rendering_kwargs['with_sdf'], rendering_kwargs['delta_geom']
        assert not self.with_sdf
        k = rendering_kwargs
        self.template_sdf = self.im3dmm = None
        if k.get('template_sdf_path'):
            self.template_sdf = IGRModel(k['template_intermediate_dims'], k['skip_connection_layers'],
                                         torch.tensor(k['bbox']), 0, 1).requires_grad_(False)
        if k.get('im3dmm_path'):
            self.im3dmm = IGRModel(k['intermediate_dims'], k['skip_connection_layers'], torch.tensor(k['bbox']),
                                   k['feature_dim'], 4, template_sdf=self.template_sdf).requires_grad_(False)
            self.sigmoid_beta = torch.nn.Parameter(0.001 * torch.ones(1))

    def run_model(self, vol_planes, decoder, sample_coordinates, sample_directions, options, features_3dmm=None):
        features = None
        if self.im3dmm is not None and features_3dmm is not None and features_3dmm.shape[-1] != 0:
            with torch.no_grad():
                features = features_3dmm[:, None, :].repeat(1, sample_coordinates.shape[-2], 1)
                sample_coordinates = self.im3dmm(sample_coordinates, features)[..., [1, 2, 3, 0]]
        sampled = sample_from_volplanes(vol_planes, sample_coordinates[..., :3], options['box_warp'],
                                        options['triplane_depth'])
        out = decoder(sampled, features)
        if sample_coordinates.shape[-1] > 3 and self.delta_geom:
            prior = sample_coordinates[..., -1:]
            out['sigma'] = torch.sigmoid(-prior / self.sigmoid_beta) / self.sigmoid_beta + out['sigma']
        if options.get('density_noise', 0) > 0:
            out['sigma'] += torch.randn_like(out['sigma']) * options['density_noise']
        return out


@eg3d._persistent('training.triplane', register=False)
class TriPlaneGenerator(torch.nn.Module):
    """OmniAvatar's `TriPlaneGenerator`: volumes of depth `triplane_depth`, labels [camera 25 | FLAME]."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, sr_num_fp16_res=0, mapping_kwargs={},  # noqa: B006
                 rendering_kwargs={}, sr_kwargs={}, **synthesis_kwargs):  # noqa: B006
        super().__init__()
        background_kwargs = dict(synthesis_kwargs, channel_base=synthesis_kwargs['channel_base'] // 2)
        eg3d._store(self, locals(), 'z_dim c_dim w_dim img_resolution img_channels')
        k = rendering_kwargs
        with_warp = bool(k.get('im3dmm_path', ''))
        self.num_volplanes, self.num_biplanes = 3 * k['triplane_depth'], 0
        self.feature_dim = k.get('feature_dim', 206) if with_warp else 0
        self.pose_dim = 106 if with_warp else 0
        self.renderer = ImportanceRenderer(k)
        self.ray_sampler = eg3d.RaySampler()
        self.backbone = Generator(z_dim, c_dim, w_dim, img_resolution=256, img_channels=32 * self.num_volplanes,
                                  mapping_kwargs=mapping_kwargs, **synthesis_kwargs)
        self.superresolution = eg3d._construct(class_name=k['superresolution_module'], channels=32,
                                               img_resolution=img_resolution, sr_num_fp16_res=sr_num_fp16_res,
                                               sr_antialias=k['sr_antialias'], **sr_kwargs)
        self.decoder = OSGDecoder(32, {'decoder_lr_mul': k.get('decoder_lr_mul', 1), 'decoder_output_dim': 32,
                                       'decoder_activation': k['decoder_activation'],
                                       'pose_perturb_magtinude': k['pose_perturb_magtinude'],
                                       'pose_embed': k.get('pose_embed', False)}, self.pose_dim)
        self.bcg_synthesis = None
        if k.get('use_background', False):
            self.bcg_synthesis = SynthesisNetwork(w_dim, img_resolution=self.superresolution.input_resolution,
                                                  img_channels=32, **background_kwargs)
        self.neural_rendering_resolution = 64
        self.rendering_kwargs = rendering_kwargs
        self._last_planes = None
        self.torgb = ToRGBLayer(32, 3, w_dim) if k.get('with_torgb', False) else None

    def __deepcopy__(self, memo):  # a copy of this class (persistence's reduce names EG3D's class)
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        label = c[..., :self.c_dim]
        if self.rendering_kwargs['c_gen_conditioning_zero']:
            label = torch.zeros_like(label)
        return self.backbone.mapping(z, label * self.rendering_kwargs.get('c_scale', 0), truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def _volumes(self, ws, **synthesis_kwargs):
        planes = self.backbone.synthesis(ws, **synthesis_kwargs)
        return planes.view(len(planes), 3, 32 * self.rendering_kwargs['triplane_depth'], *planes.shape[-2:])

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, **synthesis_kwargs):
        if neural_rendering_resolution is None:
            neural_rendering_resolution = self.neural_rendering_resolution
        else:
            self.neural_rendering_resolution = neural_rendering_resolution
        ray_origins, ray_directions = self.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3),
                                                       neural_rendering_resolution)
        features, depths, opacity = self.renderer(self._volumes(ws, **synthesis_kwargs), self.decoder, ray_origins,
                                                  ray_directions, self.rendering_kwargs,
                                                  features_3dmm=c[..., -self.feature_dim:])
        n, h = len(ray_origins), neural_rendering_resolution
        image = lambda t: t.permute(0, 2, 1).reshape(n, t.shape[-1], h, h)  # noqa: E731
        feature_image, depth_image, acc_mask = image(features).contiguous(), image(depths), image(opacity)
        if self.bcg_synthesis is not None:
            background = self.bcg_synthesis(ws[:, :self.bcg_synthesis.num_ws], **synthesis_kwargs)
            background = F.interpolate(background, size=feature_image.shape[2:], mode='bilinear', align_corners=False,
                                       antialias=self.rendering_kwargs['sr_antialias'])
            feature_image = feature_image + (1 - acc_mask) * background
        if self.decoder.activation == 'sigmoid':
            feature_image = feature_image * 2 - 1
        rgb_image = self.torgb(feature_image, ws[:, -1], fused_modconv=False) if self.torgb else feature_image[:, :3]
        sr_kwargs = {k: v for k, v in synthesis_kwargs.items() if k != 'noise_mode'}
        sr_image = self.superresolution(rgb_image, feature_image, ws,
                                        noise_mode=self.rendering_kwargs['superresolution_noise_mode'], **sr_kwargs)
        return {'image': sr_image, 'image_raw': rgb_image, 'image_depth': depth_image,
                'image_mask': acc_mask * (1 + 2 * 0.001) - 0.001}

    def sample_mixed(self, coordinates, directions, ws, features_3dmm=None, **synthesis_kwargs):
        if features_3dmm is None and self.feature_dim != 0:
            features_3dmm = torch.zeros([coordinates.shape[0], self.feature_dim], dtype=coordinates.dtype)
        return self.renderer.run_model(self._volumes(ws, **synthesis_kwargs), self.decoder, coordinates, directions,
                                       self.rendering_kwargs, features_3dmm=features_3dmm)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, neural_rendering_resolution=None, **kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution, **kwargs)


FLAME_DIM = 206  # shape 100, expression 100, neck 3, jaw 3


def build_networks(*, triplane_depth=2, background=True, torgb=True, pose_embed=False, pose_noise=0.0,
                   delta_geom=True, det_sampling=False, seed=0):
    """G, D and G_ema of a small OmniAvatar at 128^2 (EG3D's 2X super-resolution, reduced widths), the
    warp and template networks of 3 x 16 and 2 x 16 units with a skip at layer 2; random values in every
    tensor (the warp's at a scale that keeps its canonical points near the box)."""
    rendering_kwargs = {
        'image_resolution': 128, 'disparity_space_sampling': False, 'clamp_mode': 'softplus',
        'superresolution_module': 'training.superresolution.SuperresolutionHybrid2X', 'c_gen_conditioning_zero': False,
        'c_scale': 1.0, 'superresolution_noise_mode': 'none', 'decoder_lr_mul': 1.0, 'sr_antialias': True,
        'depth_resolution': 6, 'depth_resolution_importance': 6, 'ray_start': 2.25, 'ray_end': 3.3, 'box_warp': 1,
        'avg_camera_radius': 2.7, 'avg_camera_pivot': [0, 0, 0.2], 'triplane_depth': triplane_depth,
        'decoder_activation': 'sigmoid', 'pose_perturb_magtinude': pose_noise, 'pose_embed': pose_embed,
        'use_background': background, 'with_torgb': torgb, 'with_sdf': False, 'delta_geom': delta_geom,
        'det_sampling': det_sampling, 'im3dmm_path': '/train/im3dmm.pth', 'template_sdf_path': '/train/template.pth',
        'feature_dim': FLAME_DIM, 'bbox': [[-0.4, -0.45, -0.35], [0.4, 0.5, 0.45]], 'intermediate_dims': [16] * 3,
        'template_intermediate_dims': [16] * 2, 'skip_connection_layers': [2]}
    G_kwargs = dict(z_dim=512, w_dim=512, mapping_kwargs=EasyDict(num_layers=2), channel_base=1024, channel_max=64,
                    fused_modconv_default='inference_only', rendering_kwargs=rendering_kwargs, num_fp16_res=0,
                    sr_num_fp16_res=4, sr_kwargs=EasyDict(channel_base=1024, channel_max=64,
                                                          fused_modconv_default='inference_only'), conv_clamp=None)
    G = TriPlaneGenerator(c_dim=25, img_resolution=128, img_channels=3, **G_kwargs).train().requires_grad_(False)
    D = eg3d._construct('training.dual_discriminator.DualDiscriminator', c_dim=25, img_resolution=128,
                        img_channels=3, channel_base=1024, channel_max=64, num_fp16_res=4, conv_clamp=256,
                        disc_c_noise=0.0, block_kwargs=EasyDict(freeze_layers=0), mapping_kwargs=EasyDict(),
                        epilogue_kwargs=EasyDict(mbstd_group_size=4)).train().requires_grad_(False)
    G_ema = copy.deepcopy(G).eval()
    for i, net in enumerate([G, D, G_ema]):
        eg3d._randomize_(net, seed * 3 + i)
        for module in net.modules():
            if isinstance(module, torch.nn.Linear):  # the warp: unit-scale layers
                module.weight.data /= math.sqrt(module.in_features)
        if isinstance(net, TriPlaneGenerator):
            net.renderer.sigmoid_beta.data.fill_(0.05)
    return dict(G=G, D=D, G_ema=G_ema)


_PICKLED_NAMES = [  # OmniAvatar's globals a snapshot references besides torch's, numpy's, builtins'
    ('torch_utils.persistence', eg3d._reconstruct_persistent_obj),
    ('dnnlib.util', EasyDict),
    ('training.triplane', OSGDecoder),
    ('training.im3dmm_network', IGRModel),
    ('training.volumetric_rendering.renderer', ImportanceRenderer),
    ('training.volumetric_rendering.ray_marcher', MipRayMarcher2),
    ('training.volumetric_rendering.ray_sampler', eg3d.RaySampler),
]


def dump_snapshot(networks, file):
    eg3d.dump_snapshot(networks, file, names=_PICKLED_NAMES)


def labels(n, seed=0, dtype=torch.float64):
    """[n, 25 + 206] labels: EG3D's FFHQ cameras around the head, FLAME parameters of a fitted scale."""
    gen = torch.Generator().manual_seed(seed)
    cams = []
    for _ in range(n):
        yaw, pitch = (torch.rand(2, generator=gen) - 0.5) * 0.6
        cam2world = eg3d_local.LookAtPoseSampler.sample(math.pi / 2 + float(yaw), math.pi / 2 + float(pitch),
                                                        torch.tensor([0, 0, 0.2]), radius=2.7)
        intrinsics = torch.tensor([[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]])
        cams.append(torch.cat([cam2world.reshape(-1), intrinsics.reshape(-1)]))
    flame = torch.randn(n, FLAME_DIM, generator=gen) * 0.5
    return torch.cat([torch.stack(cams), flame], -1).to(dtype)
