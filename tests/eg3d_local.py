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
