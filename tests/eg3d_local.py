"""EG3D's renderer module (`training/volumetric_rendering/renderer.py` with the `MipRayMarcher2`
it imports from `ray_marcher.py` and the `math_utils` helpers it calls), written here from the
documented semantics (../shared/reference/eg3d_semantics.md) with the released module's
functions, classes and methods, so that `omnifast.eg3d.patch()` is tested on what it patches in
a real checkout: a whole render through `ImportanceRenderer.forward`; and its `RaySampler` and camera helpers
(`camera_utils.py`) for the renderer of stage II."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def generate_planes():
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)


def generate_fixed_planes():
    # rows (x, y), (y, z), (z, x): the corrected projection of the fixed_triplanes branch
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[0, 1, 0], [0, 0, 1], [1, 0, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)


def project_onto_planes(planes, coordinates):
    n, m, _ = coordinates.shape
    n_planes, _, _ = planes.shape
    coordinates = coordinates.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(n * n_planes, m, 3)
    inv_planes = torch.linalg.inv(planes).unsqueeze(0).expand(n, -1, -1, -1).reshape(n * n_planes, 3, 3)
    projections = torch.bmm(coordinates, inv_planes.to(coordinates.dtype))
    return projections[..., :2]


def sample_from_planes(plane_axes, plane_features, coordinates, mode='bilinear',
                       padding_mode='zeros', box_warp=None):
    assert padding_mode == 'zeros'
    n, n_planes, c, h, w = plane_features.shape
    _, m, _ = coordinates.shape
    plane_features = plane_features.view(n * n_planes, c, h, w)
    coordinates = (2 / box_warp) * coordinates
    projected = project_onto_planes(plane_axes, coordinates).unsqueeze(1)
    output = F.grid_sample(plane_features, projected, mode=mode, padding_mode=padding_mode,
                           align_corners=False)
    return output.permute(0, 3, 2, 1).reshape(n, n_planes, m, c)


def sample_from_3dgrid(grid, coordinates):
    batch_size, n_coords, n_dims = coordinates.shape
    sampled = F.grid_sample(grid.expand(batch_size, -1, -1, -1, -1),
                            coordinates.reshape(batch_size, 1, 1, -1, n_dims),
                            mode='bilinear', padding_mode='zeros', align_corners=False)
    n, c, h, w, d = sampled.shape
    return sampled.permute(0, 4, 3, 2, 1).reshape(n, h * w * d, c)


# ---- math_utils

def linspace(start, stop, num):
    """Asymmetric linspace for tensor bounds: start + arange(num) / (num - 1) * (stop - start)."""
    steps = torch.arange(num, dtype=torch.float32, device=start.device) / (num - 1)
    for _ in range(start.ndim):
        steps = steps.unsqueeze(-1)
    return start[None] + steps * (stop - start)[None]


def get_ray_limits_box(rays_o, rays_d, box_side_length):
    """Slab test against the centred cube of side box_side_length; invalid rays get -1, -2."""
    o_shape = rays_o.shape
    rays_o, rays_d = rays_o.detach().reshape(-1, 3), rays_d.detach().reshape(-1, 3)
    bounds = torch.tensor([[-1, -1, -1], [1, 1, 1]], dtype=rays_o.dtype,
                          device=rays_o.device) * box_side_length / 2
    invdir = 1 / rays_d
    sign = (invdir < 0).long()
    tmin = (bounds.index_select(0, sign[..., 0])[..., 0] - rays_o[..., 0]) * invdir[..., 0]
    tmax = (bounds.index_select(0, 1 - sign[..., 0])[..., 0] - rays_o[..., 0]) * invdir[..., 0]
    tymin = (bounds.index_select(0, sign[..., 1])[..., 1] - rays_o[..., 1]) * invdir[..., 1]
    tymax = (bounds.index_select(0, 1 - sign[..., 1])[..., 1] - rays_o[..., 1]) * invdir[..., 1]
    is_valid = torch.ones_like(tmin, dtype=torch.bool)
    is_valid[torch.logical_or(tmin > tymax, tymin > tmax)] = False
    tmin, tmax = torch.max(tmin, tymin), torch.min(tmax, tymax)
    tzmin = (bounds.index_select(0, sign[..., 2])[..., 2] - rays_o[..., 2]) * invdir[..., 2]
    tzmax = (bounds.index_select(0, 1 - sign[..., 2])[..., 2] - rays_o[..., 2]) * invdir[..., 2]
    is_valid[torch.logical_or(tmin > tzmax, tzmin > tmax)] = False
    tmin, tmax = torch.max(tmin, tzmin), torch.min(tmax, tzmax)
    tmin[~is_valid], tmax[~is_valid] = -1, -2
    return tmin.reshape(*o_shape[:-1], 1), tmax.reshape(*o_shape[:-1], 1)


# ---- ray_marcher.py

class MipRayMarcher2(nn.Module):
    scale_colors = True  # OmniAvatar's marcher leaves the colours in [0, 1]

    def __init__(self):
        super().__init__()

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
        composite_rgb = torch.sum(weights * colors_mid, -2)
        weight_total = weights.sum(2)
        composite_depth = torch.sum(weights * depths_mid, -2) / weight_total
        composite_depth = torch.nan_to_num(composite_depth, float('inf'))
        composite_depth = torch.clamp(composite_depth, torch.min(depths), torch.max(depths))
        if rendering_options.get('white_back', False):
            composite_rgb = composite_rgb + 1 - weight_total
        if self.scale_colors:
            composite_rgb = composite_rgb * 2 - 1
        return composite_rgb, composite_depth, weights

    def forward(self, colors, densities, depths, rendering_options):
        composite_rgb, composite_depth, weights = self.run_forward(colors, densities, depths,
                                                                   rendering_options)
        return composite_rgb, composite_depth, weights


# ---- renderer.py

class ImportanceRenderer(nn.Module):
    def __init__(self):
        super().__init__()
        self.ray_marcher = MipRayMarcher2()
        self.plane_axes = generate_planes()

    def forward(self, planes, decoder, ray_origins, ray_directions, rendering_options, **model_kwargs):
        """`model_kwargs` (OmniAvatar's FLAME parameters) reach `run_model`; OmniAvatar's
        `det_sampling` option drops the jitter and spaces the importance draws evenly."""
        det = rendering_options.get('det_sampling', False)
        self.plane_axes = self.plane_axes.to(ray_origins.device)
        if rendering_options['ray_start'] == rendering_options['ray_end'] == 'auto':
            ray_start, ray_end = get_ray_limits_box(ray_origins, ray_directions,
                                                    box_side_length=rendering_options['box_warp'])
            is_ray_valid = ray_end > ray_start
            if torch.any(is_ray_valid).item():
                ray_start[~is_ray_valid] = ray_start[is_ray_valid].min()
                ray_end[~is_ray_valid] = ray_start[is_ray_valid].max()
            depths_coarse = self.sample_stratified(ray_origins, ray_start, ray_end,
                                                   rendering_options['depth_resolution'],
                                                   rendering_options['disparity_space_sampling'], det)
        else:
            depths_coarse = self.sample_stratified(ray_origins, rendering_options['ray_start'],
                                                   rendering_options['ray_end'],
                                                   rendering_options['depth_resolution'],
                                                   rendering_options['disparity_space_sampling'], det)
        batch_size, num_rays, samples_per_ray, _ = depths_coarse.shape

        # Coarse pass
        sample_coordinates = (ray_origins.unsqueeze(-2) + depths_coarse * ray_directions.unsqueeze(-2)).reshape(batch_size, -1, 3)
        sample_directions = ray_directions.unsqueeze(-2).expand(-1, -1, samples_per_ray, -1).reshape(batch_size, -1, 3)
        out = self.run_model(planes, decoder, sample_coordinates, sample_directions, rendering_options, **model_kwargs)
        colors_coarse = out['rgb'].reshape(batch_size, num_rays, samples_per_ray, out['rgb'].shape[-1])
        densities_coarse = out['sigma'].reshape(batch_size, num_rays, samples_per_ray, 1)

        # Fine pass
        N_importance = rendering_options['depth_resolution_importance']
        if N_importance > 0:
            _, _, weights = self.ray_marcher(colors_coarse, densities_coarse, depths_coarse, rendering_options)
            depths_fine = self.sample_importance(depths_coarse, weights, N_importance, det)
            sample_directions = ray_directions.unsqueeze(-2).expand(-1, -1, N_importance, -1).reshape(batch_size, -1, 3)
            sample_coordinates = (ray_origins.unsqueeze(-2) + depths_fine * ray_directions.unsqueeze(-2)).reshape(batch_size, -1, 3)
            out = self.run_model(planes, decoder, sample_coordinates, sample_directions, rendering_options,
                                 **model_kwargs)
            colors_fine = out['rgb'].reshape(batch_size, num_rays, N_importance, out['rgb'].shape[-1])
            densities_fine = out['sigma'].reshape(batch_size, num_rays, N_importance, 1)
            all_depths, all_colors, all_densities = self.unify_samples(
                depths_coarse, colors_coarse, densities_coarse, depths_fine, colors_fine, densities_fine)
            rgb_final, depth_final, weights = self.ray_marcher(all_colors, all_densities, all_depths, rendering_options)
        else:
            rgb_final, depth_final, weights = self.ray_marcher(colors_coarse, densities_coarse, depths_coarse, rendering_options)
        return rgb_final, depth_final, weights.sum(2)

    def run_model(self, planes, decoder, sample_coordinates, sample_directions, options):
        sampled_features = sample_from_planes(self.plane_axes, planes, sample_coordinates,
                                              padding_mode='zeros', box_warp=options['box_warp'])
        out = decoder(sampled_features, sample_directions)
        if options.get('density_noise', 0) > 0:
            out['sigma'] += torch.randn_like(out['sigma']) * options['density_noise']
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
            depths_coarse += torch.rand_like(depths_coarse) * depth_delta
            depths_coarse = 1. / (1. / ray_start * (1. - depths_coarse) + 1. / ray_end * depths_coarse)
        else:
            if type(ray_start) == torch.Tensor:  # noqa: E721 (as released)
                depths_coarse = linspace(ray_start, ray_end, depth_resolution).permute(1, 2, 0, 3)
                depth_delta = (ray_end - ray_start) / (depth_resolution - 1)
                depths_coarse += torch.rand_like(depths_coarse) * depth_delta[..., None]
            else:
                depths_coarse = torch.linspace(ray_start, ray_end, depth_resolution, device=ray_origins.device) \
                    .reshape(1, 1, depth_resolution, 1).repeat(N, M, 1, 1)
                depth_delta = (ray_end - ray_start) / (depth_resolution - 1)
                if not det:
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
            importance_z_vals = self.sample_pdf(z_vals_mid, weights[:, 1:-1], N_importance, det).detach() \
                .reshape(batch_size, num_rays, N_importance, 1)
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


# ---- ray_sampler.py and camera_utils.py

class RaySampler(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, cam2world_matrix, intrinsics, resolution):
        N, M = cam2world_matrix.shape[0], resolution ** 2
        cam_locs_world = cam2world_matrix[:, :3, 3]
        fx, fy = intrinsics[:, 0, 0], intrinsics[:, 1, 1]
        cx, cy, sk = intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 0, 1]
        uv = torch.stack(torch.meshgrid(torch.arange(resolution, dtype=torch.float32, device=cam2world_matrix.device),
                                        torch.arange(resolution, dtype=torch.float32, device=cam2world_matrix.device),
                                        indexing='ij')) * (1. / resolution) + (0.5 / resolution)
        uv = uv.flip(0).reshape(2, -1).transpose(1, 0)
        uv = uv.unsqueeze(0).repeat(cam2world_matrix.shape[0], 1, 1)
        x_cam = uv[:, :, 0].view(N, -1)
        y_cam = uv[:, :, 1].view(N, -1)
        z_cam = torch.ones((N, M), device=cam2world_matrix.device)
        x_lift = (x_cam - cx.unsqueeze(-1) + cy.unsqueeze(-1) * sk.unsqueeze(-1) / fy.unsqueeze(-1)
                  - sk.unsqueeze(-1) * y_cam / fy.unsqueeze(-1)) / fx.unsqueeze(-1) * z_cam
        y_lift = (y_cam - cy.unsqueeze(-1)) / fy.unsqueeze(-1) * z_cam
        cam_rel_points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
        world_rel_points = torch.bmm(cam2world_matrix, cam_rel_points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
        ray_dirs = world_rel_points - cam_locs_world[:, None, :]
        ray_dirs = torch.nn.functional.normalize(ray_dirs, dim=2)
        ray_origins = cam_locs_world.unsqueeze(1).repeat(1, ray_dirs.shape[1], 1)
        return ray_origins, ray_dirs


def normalize_vecs(vectors):
    return vectors / (torch.norm(vectors, dim=-1, keepdim=True))


def create_cam2world_matrix(forward_vector, origin):
    forward_vector = normalize_vecs(forward_vector)
    up_vector = torch.tensor([0, 1, 0], dtype=torch.float, device=origin.device).expand_as(forward_vector)
    right_vector = -normalize_vecs(torch.cross(up_vector, forward_vector, dim=-1))
    up_vector = normalize_vecs(torch.cross(forward_vector, right_vector, dim=-1))
    rotation_matrix = torch.eye(4, device=origin.device).unsqueeze(0).repeat(forward_vector.shape[0], 1, 1)
    rotation_matrix[:, :3, :3] = torch.stack((right_vector, up_vector, forward_vector), axis=-1)
    translation_matrix = torch.eye(4, device=origin.device).unsqueeze(0).repeat(forward_vector.shape[0], 1, 1)
    translation_matrix[:, :3, 3] = origin
    return (translation_matrix @ rotation_matrix)[:, :, :]


class LookAtPoseSampler:
    @staticmethod
    def sample(horizontal_mean, vertical_mean, lookat_position, horizontal_stddev=0, vertical_stddev=0, radius=1,
               batch_size=1, device='cpu'):
        h = torch.randn((batch_size, 1), device=device) * horizontal_stddev + horizontal_mean
        v = torch.randn((batch_size, 1), device=device) * vertical_stddev + vertical_mean
        v = torch.clamp(v, 1e-5, math.pi - 1e-5)
        theta = h
        v = v / math.pi
        phi = torch.arccos(1 - 2 * v)
        camera_origins = torch.zeros((batch_size, 3), device=device)
        camera_origins[:, 0:1] = radius * torch.sin(phi) * torch.cos(math.pi - theta)
        camera_origins[:, 2:3] = radius * torch.sin(phi) * torch.sin(math.pi - theta)
        camera_origins[:, 1:2] = radius * torch.cos(phi)
        forward_vectors = normalize_vecs(lookat_position - camera_origins)
        return create_cam2world_matrix(forward_vectors, camera_origins)


def FOV_to_intrinsics(fov_degrees, device='cpu'):
    focal_length = float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))
    return torch.tensor([[focal_length, 0, 0.5], [0, focal_length, 0.5], [0, 0, 1]], device=device)
