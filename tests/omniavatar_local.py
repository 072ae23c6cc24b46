"""OmniAvatar's renderer module (`training/volumetric_rendering/renderer.py` of
hongyixu37/omniavatar-proj, with the `MipRayMarcher2` it imports from its `ray_marcher.py`),
written here from the documented semantics (../shared/reference/eg3d_semantics.md, sections 2 to
5) with the released module's functions, classes and methods, so that `omnifast.eg3d.patch()` is
tested on what it patches in a real checkout: whole renders through
`ImportanceRenderer.forward` in the midpoint, absorption and force_background paths.

One liberty: the released renderer loads its frozen semantic SDF (`IGRModel`) from
`rendering_kwargs['im3dmm_path']`; here `rendering_kwargs['im3dmm']` hands in the module itself
(called as the renderer calls it: a query dict in, `(x, inside, hidden)` out, x = [s, x_bar])."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from eg3d_local import get_ray_limits_box, linspace


def generate_planes():
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 1, 0], [0, 0, 1], [1, 0, 0]]], dtype=torch.float32)


def project_onto_planes(n_planes, coordinates, vol_proj=True):
    N, M, C = coordinates.shape
    if vol_proj:
        xyz, yzx, xzy = coordinates[..., [0, 1, 2]], coordinates[..., [1, 2, 0]], coordinates[..., [0, 2, 1]]
        return torch.stack([xyz, yzx, xzy], dim=1).view(N * n_planes, M, 3)
    zs, ys, xs = coordinates[..., [2, 3]], coordinates[..., [1, 3]], coordinates[..., [0, 3]]
    return torch.stack([zs, ys, xs], dim=1).view(N * n_planes, M, 2)


def grid_sample(image, optical):
    """The customised 2-D sampler (align_corners=True, border clamp, twice differentiable)."""
    N, C, IH, IW = image.shape
    _, H, W, _ = optical.shape
    ix = ((optical[..., 0] + 1) / 2) * (IW - 1)
    iy = ((optical[..., 1] + 1) / 2) * (IH - 1)
    with torch.no_grad():
        ix_nw, iy_nw = torch.floor(ix), torch.floor(iy)
        ix_ne, iy_ne = ix_nw + 1, iy_nw
        ix_sw, iy_sw = ix_nw, iy_nw + 1
        ix_se, iy_se = ix_nw + 1, iy_nw + 1
    nw = (ix_se - ix) * (iy_se - iy)
    ne = (ix - ix_sw) * (iy_sw - iy)
    sw = (ix_ne - ix) * (iy - iy_ne)
    se = (ix - ix_nw) * (iy - iy_nw)
    with torch.no_grad():
        for t, top in ((ix_nw, IW), (iy_nw, IH), (ix_ne, IW), (iy_ne, IH), (ix_sw, IW), (iy_sw, IH),
                       (ix_se, IW), (iy_se, IH)):
            torch.clamp(t, 0, top - 1, out=t)
    image = image.view(N, C, IH * IW)
    gather = lambda x, y: torch.gather(image, 2, (y * IW + x).long().view(N, 1, H * W).repeat(1, C, 1))  # noqa: E731
    return (gather(ix_nw, iy_nw).view(N, C, H, W) * nw.view(N, 1, H, W)
            + gather(ix_ne, iy_ne).view(N, C, H, W) * ne.view(N, 1, H, W)
            + gather(ix_sw, iy_sw).view(N, C, H, W) * sw.view(N, 1, H, W)
            + gather(ix_se, iy_se).view(N, C, H, W) * se.view(N, 1, H, W))


def sample_from_volplanes(plane_features, coordinates, mode='bilinear', padding_mode='zeros',
                          box_warp=None, triplane_depth=1, custimized_sample_op=False):
    assert padding_mode == 'zeros'
    N, n_planes, CD, H, W = plane_features.shape
    _, M, _ = coordinates.shape
    C, D = CD // triplane_depth, triplane_depth
    plane_features = plane_features.reshape(N * n_planes, C, D, H, W)
    coordinates = (2 / torch.tensor(box_warp, device=coordinates.device, dtype=torch.float32)) * coordinates
    projected = project_onto_planes(n_planes, coordinates).unsqueeze(1).unsqueeze(2)
    if custimized_sample_op:
        return grid_sample(plane_features, projected.float()).permute(0, 3, 2, 1).reshape(N, n_planes, M, C)
    return F.grid_sample(plane_features, projected.float(), mode=mode, padding_mode=padding_mode,
                         align_corners=False).permute(0, 4, 3, 2, 1).reshape(N, n_planes, M, C)


def sample_from_3dgrid(grid, coordinates):
    batch_size, n_coords, n_dims = coordinates.shape
    sampled = F.grid_sample(grid.expand(batch_size, -1, -1, -1, -1),
                            coordinates.reshape(batch_size, 1, 1, -1, n_dims),
                            mode='bilinear', padding_mode='zeros', align_corners=False)
    N, C, H, W, D = sampled.shape
    return sampled.permute(0, 4, 3, 2, 1).reshape(N, H * W * D, C)


# ---- ray_marcher.py

class MipRayMarcher2(nn.Module):
    def __init__(self):
        super().__init__()

    def run_forward_absorption(self, colors, densities, depths, rendering_options):
        deltas = depths[:, :, 1:] - depths[:, :, :-1]
        deltas = torch.cat((deltas, 1e10 * torch.ones_like(deltas[:, :, :1])), dim=-2)
        if rendering_options['clamp_mode'] == 'softplus':
            densities = F.softplus(densities - 1)
        else:
            assert False, "MipRayMarcher2 only supports `clamp_mode`=`softplus`!"
        density_delta = densities * deltas
        alpha = 1 - torch.exp(-density_delta)
        alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
        weights = alpha * torch.cumprod(alpha_shifted, -2)[:, :, :-1]
        if rendering_options.get('force_background', False):
            weights[..., -1, :] = 1 - weights[..., :-1, :].sum(-2)
        composite_rgb = torch.sum(weights * colors, -2)
        weight_total = weights.sum(2)
        composite_depth = torch.sum(weights * depths, -2) / weight_total
        composite_depth = torch.nan_to_num(composite_depth, float('inf'))
        composite_depth = torch.clamp(composite_depth, torch.min(depths), torch.max(depths))
        if rendering_options.get('white_back', False):
            composite_rgb = composite_rgb + 1 - weight_total
        composite_rgb = composite_rgb * 2 - 1
        return composite_rgb, composite_depth, weights

    def run_forward(self, colors, densities, depths, rendering_options):
        deltas = depths[:, :, 1:] - depths[:, :, :-1]
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
        depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
        if rendering_options['clamp_mode'] == 'softplus':
            densities_mid = F.softplus(densities_mid - 1)
        else:
            assert False, "MipRayMarcher only supports `clamp_mode`=`softplus`!"
        density_delta = densities_mid * deltas
        alpha = 1 - torch.exp(-density_delta)
        alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
        weights = alpha * torch.cumprod(alpha_shifted, -2)[:, :, :-1]
        if rendering_options.get('force_background', False):
            weights[..., -1, :] = 1 - weights[..., :-1, :].sum(-2)
        composite_rgb = torch.sum(weights * colors_mid, -2)
        weight_total = weights.sum(2)
        composite_depth = torch.sum(weights * depths_mid, -2) / weight_total
        composite_depth = torch.nan_to_num(composite_depth, float('inf'))
        composite_depth = torch.clamp(composite_depth, torch.min(depths), torch.max(depths))
        if rendering_options.get('white_back', False):
            composite_rgb = composite_rgb + 1 - weight_total
        return composite_rgb, composite_depth, weights

    def forward(self, colors, densities, depths, rendering_options):
        if rendering_options.get('absorption', False):
            return self.run_forward_absorption(colors, densities, depths, rendering_options)
        return self.run_forward(colors, densities, depths, rendering_options)


# ---- renderer.py

class ImportanceRenderer(nn.Module):
    def __init__(self, rendering_kwargs):
        super().__init__()
        self.ray_marcher = MipRayMarcher2()
        self.plane_axes = generate_planes()
        self.with_sdf = rendering_kwargs['with_sdf']
        self.delta_geom = rendering_kwargs['delta_geom']
        self.template_sdf = None
        self.im3dmm = self.load_im3dmm(rendering_kwargs)
        if self.with_sdf or self.im3dmm is not None:
            self.sigmoid_beta = nn.Parameter(0.001 * torch.ones(1))

    def load_im3dmm(self, rendering_kwargs):
        im3dmm = rendering_kwargs.get('im3dmm')
        if im3dmm is None:
            return None
        for param in im3dmm.parameters():
            param.requires_grad = False
        return im3dmm

    def forward(self, vol_planes, bi_planes, decoder, ray_origins, ray_directions, rendering_options,
                return_eikonal=False, features_3dmm=None, return_prior=False,
                return_weighted_geom_delta=False):
        self.plane_axes = self.plane_axes.to(ray_origins.device)
        det = rendering_options.get('det_sampling', False)
        if rendering_options['ray_start'] == rendering_options['ray_end'] == 'auto':
            ray_start, ray_end = get_ray_limits_box(ray_origins, ray_directions,
                                                    box_side_length=rendering_options['box_warp'])
            is_ray_valid = ray_end > ray_start
            if torch.any(is_ray_valid).item():
                ray_start[~is_ray_valid] = ray_start[is_ray_valid].min()
                ray_end[~is_ray_valid] = ray_start[is_ray_valid].max()
            depths_coarse = self.sample_stratified(ray_origins, ray_start, ray_end,
                                                   rendering_options['depth_resolution'],
                                                   rendering_options['disparity_space_sampling'], det=det)
        else:
            depths_coarse = self.sample_stratified(ray_origins, rendering_options['ray_start'],
                                                   rendering_options['ray_end'],
                                                   rendering_options['depth_resolution'],
                                                   rendering_options['disparity_space_sampling'], det=det)
        batch_size, num_rays, samples_per_ray, _ = depths_coarse.shape
        model_args = (rendering_options, return_eikonal, features_3dmm, return_prior, return_weighted_geom_delta)

        # Coarse pass
        sample_coordinates = (ray_origins.unsqueeze(-2) + depths_coarse * ray_directions.unsqueeze(-2)).reshape(batch_size, -1, 3)
        sample_directions = ray_directions.unsqueeze(-2).expand(-1, -1, samples_per_ray, -1).reshape(batch_size, -1, 3)
        out = self.run_model(vol_planes, bi_planes, decoder, sample_coordinates, sample_directions, *model_args)
        colors_coarse = out['rgb'].reshape(batch_size, num_rays, samples_per_ray, out['rgb'].shape[-1])
        densities_coarse = out['sigma'].reshape(batch_size, num_rays, samples_per_ray, 1)
        eikonal_term = None
        if self.with_sdf:
            geom_densities = out['sdf'].reshape(batch_size, num_rays, samples_per_ray, 1)
        else:
            geom_densities = densities_coarse

        # Fine pass
        N_importance = rendering_options['depth_resolution_importance']
        if N_importance > 0:
            _, _, weights = self.ray_marcher(colors_coarse, densities_coarse, depths_coarse, rendering_options)
            depths_fine = self.sample_importance(depths_coarse, weights, N_importance, det=det)
            sample_directions = ray_directions.unsqueeze(-2).expand(-1, -1, N_importance, -1).reshape(batch_size, -1, 3)
            sample_coordinates = (ray_origins.unsqueeze(-2) + depths_fine * ray_directions.unsqueeze(-2)).reshape(batch_size, -1, 3)
            out = self.run_model(vol_planes, bi_planes, decoder, sample_coordinates, sample_directions, *model_args)
            colors_fine = out['rgb'].reshape(batch_size, num_rays, N_importance, out['rgb'].shape[-1])
            densities_fine = out['sigma'].reshape(batch_size, num_rays, N_importance, 1)
            all_depths, all_colors, all_densities = self.unify_samples(
                depths_coarse, colors_coarse, densities_coarse, depths_fine, colors_fine, densities_fine)
            rgb_final, depth_final, weights = self.ray_marcher(all_colors, all_densities, all_depths, rendering_options)
            if self.with_sdf:
                geom_densities = torch.cat([geom_densities, out['sdf'].reshape(batch_size, num_rays, N_importance, 1)], dim=-2)
            else:
                geom_densities = all_densities
        else:
            rgb_final, depth_final, weights = self.ray_marcher(colors_coarse, densities_coarse, depths_coarse, rendering_options)
        weights_mask = torch.sum(weights, dim=-2)
        if not return_eikonal:
            eikonal_term = geom_densities
        return rgb_final, depth_final, weights_mask, eikonal_term, None, None, None, None

    def sdf_activation(self, input):
        return torch.sigmoid(input / self.sigmoid_beta) / self.sigmoid_beta

    def run_model(self, vol_planes, bi_planes, decoder, sample_coordinates, sample_directions, options,
                  return_eikonal=False, features_3dmm=None, return_prior=False,
                  return_weighted_geom_delta=False):
        im3dmm_features = None
        if self.im3dmm is not None and features_3dmm is not None:
            feature_dim = features_3dmm.shape[-1]
            if feature_dim != 0:
                with torch.no_grad():
                    num_points = sample_coordinates.shape[-2]
                    im3dmm_features = features_3dmm[:, None, :].repeat([1, num_points, 1]) \
                        .view(*sample_coordinates.shape[:-1], feature_dim)
                    query = {'points': sample_coordinates, 'return_distance_only': False,
                             'return_warping_only': True, 'features': im3dmm_features}
                    sample_coordinates, _, _ = self.im3dmm(query)
                    if sample_coordinates.shape[-1] > 3:
                        sample_coordinates = sample_coordinates[..., [1, 2, 3, 0]]
        sampled_features = sample_from_volplanes(
            vol_planes, sample_coordinates[..., :3], padding_mode='zeros', box_warp=options['box_warp'],
            triplane_depth=options['triplane_depth'], custimized_sample_op=self.with_sdf)
        out = decoder(sampled_features, im3dmm_features)
        out['residual'] = 0
        if sample_coordinates.shape[-1] > 3:
            prior_sdf = sample_coordinates[..., -1:]
            sdf_sigma = self.sdf_activation(-prior_sdf)
            if return_prior:
                out['sigma'] = sdf_sigma
                out['geom_delta'] = out['sigma'] if self.delta_geom else out['sigma'] - sdf_sigma
            elif self.delta_geom:
                out['sigma'] = sdf_sigma + out['sigma']
                if return_weighted_geom_delta:
                    out['geom_delta'] = out['sigma']
            else:
                out['geom_delta'] = out['sigma'] - sdf_sigma
        if options.get('density_noise', 0) > 0:
            out['sigma'] += torch.randn_like(out['sigma']) * options['density_noise']
        out['eikonal'] = None
        return out

    def sort_samples(self, all_depths, all_colors, all_densities):
        _, indices = torch.sort(all_depths, dim=-2)
        all_depths = torch.gather(all_depths, -2, indices)
        all_colors = torch.gather(all_colors, -2, indices.expand(-1, -1, -1, all_colors.shape[-1]))
        all_densities = torch.gather(all_densities, -2, indices.expand(-1, -1, -1, 1))
        return all_depths, all_colors, all_densities

    def unify_samples(self, depths1, colors1, densities1, depths2, colors2, densities2):
        all_depths = torch.cat([depths1, depths2], dim=-2)
        all_colors = torch.cat([colors1, colors2], dim=-2)
        all_densities = torch.cat([densities1, densities2], dim=-2)
        _, indices = torch.sort(all_depths, dim=-2)
        all_depths = torch.gather(all_depths, -2, indices)
        all_colors = torch.gather(all_colors, -2, indices.expand(-1, -1, -1, all_colors.shape[-1]))
        all_densities = torch.gather(all_densities, -2, indices.expand(-1, -1, -1, 1))
        return all_depths, all_colors, all_densities

    def sample_stratified(self, ray_origins, ray_start, ray_end, depth_resolution,
                          disparity_space_sampling=False, det=False):
        N, M, _ = ray_origins.shape
        if disparity_space_sampling:
            depths_coarse = torch.linspace(0, 1, depth_resolution, device=ray_origins.device) \
                .reshape(1, 1, depth_resolution, 1).repeat(N, M, 1, 1)
            depth_delta = 1 / (depth_resolution - 1)
            if not det:
                depths_coarse += torch.rand_like(depths_coarse) * depth_delta
            depths_coarse = 1. / (1. / ray_start * (1. - depths_coarse) + 1. / ray_end * depths_coarse)
        else:
            if type(ray_start) == torch.Tensor:  # noqa: E721 (as released)
                depths_coarse = linspace(ray_start, ray_end, depth_resolution).permute(1, 2, 0, 3)
            else:
                depths_coarse = torch.linspace(ray_start, ray_end, depth_resolution, device=ray_origins.device) \
                    .reshape(1, 1, depth_resolution, 1).repeat(N, M, 1, 1)
            if not det:
                depth_delta = (ray_end - ray_start) / (depth_resolution - 1)
                depths_coarse += torch.rand_like(depths_coarse) * depth_delta
        return depths_coarse

    def sample_importance(self, z_vals, weights, N_importance, det=False):
        with torch.no_grad():
            batch_size, num_rays, samples_per_ray, _ = z_vals.shape
            z_vals = z_vals.reshape(batch_size * num_rays, samples_per_ray)
            weights = weights.reshape(batch_size * num_rays, -1)
            weights = F.max_pool1d(weights.unsqueeze(1).float(), 2, 1, padding=1)
            weights = F.avg_pool1d(weights, 2, 1).squeeze()
            weights = weights + 0.01
            z_vals_mid = 0.5 * (z_vals[:, :-1] + z_vals[:, 1:])
            importance_z_vals = self.sample_pdf(z_vals_mid, weights[:, 1:-1], N_importance, det=det) \
                .detach().reshape(batch_size, num_rays, N_importance, 1)
        return importance_z_vals

    def sample_pdf(self, bins, weights, N_importance, det=False, eps=1e-5):
        N_rays, N_samples_ = weights.shape
        weights = weights + eps
        pdf = weights / torch.sum(weights, -1, keepdim=True)
        cdf = torch.cumsum(pdf, -1)
        cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
        if det:
            u = torch.linspace(0, 1, N_importance, device=bins.device).expand(N_rays, N_importance)
        else:
            u = torch.rand(N_rays, N_importance, device=bins.device)
        u = u.contiguous()
        inds = torch.searchsorted(cdf, u, right=True)
        below = torch.clamp_min(inds - 1, 0)
        above = torch.clamp_max(inds, N_samples_)
        inds_sampled = torch.stack([below, above], -1).view(N_rays, 2 * N_importance)
        cdf_g = torch.gather(cdf, 1, inds_sampled).view(N_rays, N_importance, 2)
        bins_g = torch.gather(bins, 1, inds_sampled).view(N_rays, N_importance, 2)
        denom = cdf_g[..., 1] - cdf_g[..., 0]
        denom[denom < eps] = 1
        return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


# ---- networks_stylegan2.py and triplane.py: the decoder

class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        return torch.addmm(b.unsqueeze(0), x, w.t())


class OSGDecoder(nn.Module):
    """OmniAvatar's decoder; its pose slice is the last `n_pose_features` numbers (106 for its
    206-long FLAME vector), the neck being the three before the jaw's."""

    def __init__(self, n_features, options, n_pose_features):
        super().__init__()
        self.hidden_dim = 64
        self.n_pose_features = n_pose_features
        self.pose_embed = options.get('pose_embed', False)
        self.pose_perturb_magtinude = options.get('pose_perturb_magtinude', 0)
        self.decoder_activation = options.get('decoder_activation', 'sigmoid')
        lr = options['decoder_lr_mul']
        if n_pose_features > 0:
            self.pose_net = nn.Sequential(
                FullyConnectedLayer(n_pose_features * (3 if self.pose_embed else 1), 32, lr_multiplier=lr),
                nn.Softplus())
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features + (32 if n_pose_features > 0 else 0), self.hidden_dim, lr_multiplier=lr),
            nn.Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + options['decoder_output_dim'], lr_multiplier=lr))

    def forward(self, sampled_features, sampled_poses):
        N, n_planes, M, C = sampled_features.shape
        x = sampled_features.mean(1).reshape(N * M, C)
        if self.n_pose_features > 0:
            poses = sampled_poses[..., :1, -self.n_pose_features:].clone()
            m = self.pose_perturb_magtinude
            poses[..., :-6] += torch.randn_like(poses[..., :-6]) * m
            poses[..., -6:-3] += torch.randn_like(poses[..., -6:-3]) * m * 0.2
            poses[..., -3:] += torch.randn_like(poses[..., -3:]) * m
            if self.pose_embed:
                poses = torch.cat([torch.sin(math.pi * poses), torch.cos(math.pi * poses), poses], -1)
            pose_features = self.pose_net(poses.view(N, -1)).repeat_interleave(M, dim=0)
            x = torch.cat([x, pose_features], -1)
        x = self.net(x).view(N, M, -1)
        rgb = x[..., 1:]
        if self.decoder_activation == 'sigmoid':
            rgb = torch.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        elif self.decoder_activation == 'lrelu':
            rgb = F.leaky_relu(rgb, 0.2) * math.sqrt(2)
        return {'rgb': rgb, 'sigma': x[..., 0:1]}
