"""EG3D's and OmniAvatar's sampling functions, written here from the documented semantics
(generate_planes / project_onto_planes / sample_from_planes of EG3D, sample_from_volplanes of
OmniAvatar), to check omnifast's drop-ins against them."""
import torch
import torch.nn.functional as F


def generate_planes():
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)


def generate_fixed_planes():
    # rows (x, y), (y, z), (z, x): the corrected projection
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


def sample_from_volplanes(plane_features, coordinates, mode='bilinear', padding_mode='zeros',
                          box_warp=None, triplane_depth=1):
    assert padding_mode == 'zeros'
    n, n_planes, cd, h, w = plane_features.shape
    _, m, _ = coordinates.shape
    c = cd // triplane_depth
    volumes = plane_features.reshape(n * n_planes, c, triplane_depth, h, w)
    coordinates = (2 / torch.tensor(box_warp, dtype=torch.float32)).to(coordinates) * coordinates
    x, y, z = coordinates.unbind(-1)
    grid = torch.stack([torch.stack([x, y, z], -1), torch.stack([y, z, x], -1),
                        torch.stack([x, z, y], -1)], dim=1).reshape(n * n_planes, 1, 1, m, 3)
    output = F.grid_sample(volumes, grid, mode=mode, padding_mode=padding_mode,
                           align_corners=False)
    return output.permute(0, 4, 3, 2, 1).reshape(n, n_planes, m, c)


class MipRayMarcher2(torch.nn.Module):
    """EG3D's ray marcher, midpoint mode, as documented."""

    def run_forward(self, colors, densities, depths, rendering_options):
        deltas = depths[:, :, 1:] - depths[:, :, :-1]
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
        depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
        assert rendering_options['clamp_mode'] == 'softplus'
        densities_mid = F.softplus(densities_mid - 1)
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
        composite_rgb = composite_rgb * 2 - 1
        return composite_rgb, composite_depth, weights

    def forward(self, colors, densities, depths, rendering_options):
        return self.run_forward(colors, densities, depths, rendering_options)


class ImportanceRenderer:
    """The two sampling methods of EG3D's renderer, as documented."""

    def sample_importance(self, z_vals, weights, N_importance):
        with torch.no_grad():
            batch_size, num_rays, samples_per_ray, _ = z_vals.shape
            z_vals = z_vals.reshape(batch_size * num_rays, samples_per_ray)
            weights = weights.reshape(batch_size * num_rays, -1)
            weights = F.max_pool1d(weights.unsqueeze(1).float(), 2, 1, padding=1)
            weights = F.avg_pool1d(weights, 2, 1).squeeze()
            weights = weights + 0.01
            z_vals_mid = 0.5 * (z_vals[:, :-1] + z_vals[:, 1:])
            return self.sample_pdf(z_vals_mid, weights[:, 1:-1], N_importance).detach().reshape(
                batch_size, num_rays, N_importance, 1)

    def sample_pdf(self, bins, weights, N_importance, eps=1e-5):
        N_rays, N_samples_ = weights.shape
        weights = weights + eps
        pdf = weights / torch.sum(weights, -1, keepdim=True)
        cdf = torch.cumsum(pdf, -1)
        cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
        u = torch.rand(N_rays, N_importance, device=bins.device).contiguous()
        inds = torch.searchsorted(cdf, u, right=True)
        below = torch.clamp_min(inds - 1, 0)
        above = torch.clamp_max(inds, N_samples_)
        inds_sampled = torch.stack([below, above], -1).view(N_rays, 2 * N_importance)
        cdf_g = torch.gather(cdf, 1, inds_sampled).view(N_rays, N_importance, 2)
        bins_g = torch.gather(bins, 1, inds_sampled).view(N_rays, N_importance, 2)
        denom = cdf_g[..., 1] - cdf_g[..., 0]
        denom[denom < eps] = 1
        return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])

    def unify_samples(self, depths1, colors1, densities1, depths2, colors2, densities2):
        all_depths = torch.cat([depths1, depths2], dim=-2)
        all_colors = torch.cat([colors1, colors2], dim=-2)
        all_densities = torch.cat([densities1, densities2], dim=-2)
        _, indices = torch.sort(all_depths, dim=-2, stable=True)
        all_depths = torch.gather(all_depths, -2, indices)
        all_colors = torch.gather(all_colors, -2, indices.expand(-1, -1, -1, all_colors.shape[-1]))
        all_densities = torch.gather(all_densities, -2, indices.expand(-1, -1, -1, 1))
        return all_depths, all_colors, all_densities
