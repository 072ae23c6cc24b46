"""Compatibility with EG3D's and OmniAvatar's released renderers: drop-ins with their exact
signatures and outputs, and ``patch()``, which swaps them into an imported renderer module.

    import omnifast.eg3d
    from training.volumetric_rendering import renderer   # EG3D or OmniAvatar
    omnifast.eg3d.patch(renderer)                          # the renderer now runs on omnifast

Unpickled EG3D generators call the module-level functions of the installed renderer module and
the methods of its classes, so patching that module is enough for existing training and
inference code.
"""
import types

import torch

from .ops.composite import composite, importance_sample, merge_samples
from .ops.triplane import plane_dims, triplane_sample
from .reference import rendering as reference_rendering
from .reference import triplane as reference


def generate_planes():
    """EG3D's plane axis matrices, float32 [3, 3, 3] (rows are the plane's axes)."""
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)


def project_onto_planes(planes, coordinates):
    """EG3D's projection: [N, M, 3] -> [N*3, M, 2] via the inverse plane matrices."""
    n, m, _ = coordinates.shape
    n_planes = planes.shape[0]
    coords = coordinates.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(n * n_planes, m, 3)
    inv = torch.linalg.inv(planes).unsqueeze(0).expand(n, -1, -1, -1).reshape(n * n_planes, 3, 3)
    return torch.bmm(coords, inv)[..., :2]


def plane_axes_to_indices(plane_axes):
    """Coordinate indices per plane when `plane_axes` are permutation matrices, else None.

    EG3D projects with inv(P); for a permutation P that is P^T, so component j of the projection
    is the coordinate where row j of P holds its 1: a pure gather, bit-identical to the bmm.
    """
    if not isinstance(plane_axes, torch.Tensor) or plane_axes.shape != (3, 3, 3):
        return None
    values = plane_axes.detach().to("cpu", torch.float64)  # 27 numbers
    is_permutation = (((values == 0) | (values == 1)).all() and (values.sum(1) == 1).all()
                      and (values.sum(2) == 1).all())
    if not is_permutation:
        return None
    return tuple(tuple(int(values[p, row].argmax()) for row in range(2)) for p in range(3))


def sample_from_planes(plane_axes, plane_features, coordinates, mode='bilinear',
                       padding_mode='zeros', box_warp=None):
    """EG3D's ``sample_from_planes``: ``[N, 3, C, H, W]`` planes at ``[N, M, 3]`` -> ``[N, 3, M, C]``.

    Permutation plane axes (EG3D's own and the fixed variant) take omnifast's kernel; anything
    else runs EG3D's grid_sample pipeline.
    """
    assert padding_mode == 'zeros'
    box_warp = 1.0 if box_warp is None else box_warp
    axes = plane_axes_to_indices(plane_axes)
    if mode != 'bilinear' or axes is None or plane_dims(plane_features, "sample_from_planes") != 2:
        return _sample_from_planes_reference(plane_axes, plane_features, coordinates, mode,
                                             box_warp)
    return triplane_sample(plane_features, coordinates, box_warp=box_warp, reduce="none",
                           axes=axes)


def _sample_from_planes_reference(plane_axes, plane_features, coordinates, mode, box_warp):
    n, n_planes, c, h, w = plane_features.shape
    _, m, _ = coordinates.shape
    features = plane_features.view(n * n_planes, c, h, w)
    coordinates = (2 / box_warp) * coordinates
    projected = project_onto_planes(plane_axes, coordinates).unsqueeze(1)
    out = torch.nn.functional.grid_sample(features, projected, mode=mode,
                                          padding_mode='zeros', align_corners=False)
    return out.permute(0, 3, 2, 1).reshape(n, n_planes, m, c)


def sample_from_volplanes(plane_features, coordinates, mode='bilinear', padding_mode='zeros',
                          box_warp=None, triplane_depth=1, custimized_sample_op=False):
    """OmniAvatar's ``sample_from_volplanes``: ``[N, 3, C*D, H, W]`` at ``[N, M, 3]`` -> ``[N, 3, M, C]``.

    Each of the three C x D x H x W volumes is sampled trilinearly at xyz, yzx and xzy (zero
    padding on the depth axis too, so D = 1 is not a plain bilinear plane).
    """
    assert padding_mode == 'zeros'
    if custimized_sample_op:
        # OmniAvatar's customised sampler is 2-D only; its own code fails on these 5-D volumes.
        raise ValueError("sample_from_volplanes: custimized_sample_op=True is OmniAvatar's 2-D "
                         "align_corners=True sampler, which cannot sample tri-grid volumes")
    n, n_planes, cd, h, w = plane_features.shape
    if isinstance(triplane_depth, bool) or not isinstance(triplane_depth, int) or triplane_depth < 1:
        raise ValueError(f"sample_from_volplanes: triplane_depth must be a positive integer, got "
                         f"{triplane_depth!r}")
    if cd % triplane_depth != 0:
        raise ValueError(f"sample_from_volplanes: {cd} channels do not split into "
                         f"triplane_depth={triplane_depth} slices")
    volumes = plane_features.view(n, n_planes, cd // triplane_depth, triplane_depth, h, w)
    box_warp = 1.0 if box_warp is None else box_warp
    # OmniAvatar divides in float32: 2 / torch.tensor(box_warp, dtype=float32).
    factor = (2 / torch.tensor(box_warp, dtype=torch.float32)).tolist()
    box = [2.0 / f for f in factor] if isinstance(factor, list) else 2.0 / factor
    if mode != 'bilinear':
        return reference.triplane_sample(volumes, coordinates, box_warp=box, reduce="none")
    return triplane_sample(volumes, coordinates, box_warp=box, reduce="none")


def _softplus_only(rendering_options):
    assert rendering_options['clamp_mode'] == 'softplus', \
        "MipRayMarcher only supports `clamp_mode`=`softplus`!"


# The marchers' methods are plain functions of (self, ...) that use nothing else of self: patch()
# puts them on the released classes, whose instances have none of omnifast's attributes.

def eg3d_run_forward(self, colors, densities, depths, rendering_options):
    """EG3D's ``MipRayMarcher2.run_forward``: midpoint compositing of raw densities, then x2 - 1."""
    _softplus_only(rendering_options)
    out = composite(colors, densities, depths, field_type="density", mode="midpoint",
                    white_back=rendering_options.get('white_back', False), return_weights=True)
    return out.features * 2 - 1, out.depth, out.weights


def _omniavatar_march(colors, densities, depths, rendering_options, mode):
    _softplus_only(rendering_options)
    white_back = rendering_options.get('white_back', False)
    if rendering_options.get('force_background', False):
        # It rewrites the last weight before compositing: the reference chain does that.
        out, depth, _, weights = reference_rendering.march(colors, densities, depths, mode=mode,
                                                           white_back=white_back, force_background=True)
        return out, depth, weights
    out = composite(colors, densities, depths, field_type="density", mode=mode, white_back=white_back,
                    return_weights=True)
    return out.features, out.depth, out.weights


def omniavatar_run_forward(self, colors, densities, depths, rendering_options):
    """OmniAvatar's midpoint ``run_forward``: no x2 - 1 (its generator rescales later)."""
    return _omniavatar_march(colors, densities, depths, rendering_options, "midpoint")


def omniavatar_run_forward_absorption(self, colors, densities, depths, rendering_options):
    """OmniAvatar's ``run_forward_absorption`` (last interval 1e10), with x2 - 1."""
    rgb, depth, weights = _omniavatar_march(colors, densities, depths, rendering_options, "absorption")
    return rgb * 2 - 1, depth, weights


class MipRayMarcher2(torch.nn.Module):
    """EG3D's ray marcher: midpoint compositing of raw densities, then ``x2 - 1``."""

    run_forward = eg3d_run_forward

    def forward(self, colors, densities, depths, rendering_options):
        return self.run_forward(colors, densities, depths, rendering_options)


class OmniAvatarMipRayMarcher2(torch.nn.Module):
    """OmniAvatar's ray marcher: the midpoint path without ``x2 - 1``, the absorption path
    (``rendering_options['absorption']``) with it, and ``force_background``."""

    run_forward = omniavatar_run_forward
    run_forward_absorption = omniavatar_run_forward_absorption

    def forward(self, colors, densities, depths, rendering_options):
        if rendering_options.get('absorption', False):
            return self.run_forward_absorption(colors, densities, depths, rendering_options)
        return self.run_forward(colors, densities, depths, rendering_options)


def sample_importance(self, z_vals, weights, N_importance, det=False):
    """ImportanceRenderer.sample_importance (EG3D; OmniAvatar's ``det`` too), fused and sorted."""
    return importance_sample(z_vals, weights, N_importance, deterministic=det)


def unify_samples(self, depths1, colors1, densities1, depths2, colors2, densities2):
    """ImportanceRenderer.unify_samples: a merge of the two sorted lists, coarse first on ties."""
    depths, (colors, densities) = merge_samples(depths1, depths2, (colors1, densities1),
                                                (colors2, densities2))
    return depths, colors, densities


def _swap(owner, name, replacement, originals, replaced, label):
    if hasattr(owner, name):
        originals.setdefault(label, getattr(owner, name))
        setattr(owner, name, replacement)
        replaced.append(label)


RENDERER_PARTS = ("sample_from_planes", "sample_from_volplanes", "MipRayMarcher2", "ImportanceRenderer")


def patch(module):
    """Swap omnifast into an imported EG3D/OmniAvatar renderer module
    (``training.volumetric_rendering.renderer``).

    Replaces the module's ``sample_from_planes`` / ``sample_from_volplanes``, the ray marcher's
    compositing methods on its ``MipRayMarcher2`` class (OmniAvatar's variant is recognised by
    its absorption path) and ``ImportanceRenderer.sample_importance`` / ``unify_samples``. Methods
    are replaced on the classes, so renderers built (or unpickled) before the call switch too.
    Returns the names replaced; the originals stay in ``module._omnifast_originals``.
    """
    if not isinstance(module, types.ModuleType):
        raise TypeError("omnifast.eg3d.patch: module must be an imported renderer module "
                        "(training.volumetric_rendering.renderer of EG3D or OmniAvatar), got "
                        f"{type(module).__name__}")
    if not any(hasattr(module, part) for part in RENDERER_PARTS):
        raise ValueError(f"omnifast.eg3d.patch: module must be an EG3D or OmniAvatar renderer module "
                         f"with any of {', '.join(RENDERER_PARTS)}, got {module.__name__!r} with none")
    replaced = []
    originals = getattr(module, "_omnifast_originals", {})
    for name, fn in (("sample_from_planes", sample_from_planes),
                     ("sample_from_volplanes", sample_from_volplanes)):
        _swap(module, name, fn, originals, replaced, name)
    marcher = getattr(module, "MipRayMarcher2", None)
    if marcher is not None:
        methods = ({"run_forward": omniavatar_run_forward,
                    "run_forward_absorption": omniavatar_run_forward_absorption}
                   if hasattr(marcher, "run_forward_absorption") else {"run_forward": eg3d_run_forward})
        for method, fn in methods.items():
            _swap(marcher, method, fn, originals, replaced, f"MipRayMarcher2.{method}")
    renderer = getattr(module, "ImportanceRenderer", None)
    if renderer is not None:
        for name, fn in (("sample_importance", sample_importance), ("unify_samples", unify_samples)):
            _swap(renderer, name, fn, originals, replaced, f"ImportanceRenderer.{name}")
    module._omnifast_originals = originals
    return replaced
