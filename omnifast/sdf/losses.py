"""The semantic SDF's losses. Distances enter in units of the network's box half-size, so the
weights do not depend on the head's size in metres."""
from dataclasses import dataclass, fields

from ..runs import check_fields


@dataclass
class LossWeights:
    """Weight of each term (0 switches it off)."""
    iso: float = 1.0           # |s| on the surface
    normal: float = 0.1        # |grad s - n| on the surface
    eikonal: float = 0.05      # (|grad s| - 1)^2 off the surface
    semantic: float = 1.0      # |x_bar - x_bar*| on the surface
    sdf: float = 1.0           # |s - s*| off the surface
    correspondence: float = 0.5  # |x_bar - x_bar*| off the surface

    def __post_init__(self):  # a NaN weight would silently turn its term off
        check_fields(self, numbers=[(f.name, 0, True) for f in fields(self)])


def iso_loss(sdf, gradient, normals):
    """``L_iso`` in two parts: mean |s| and mean |grad s - n| on surface samples."""
    return sdf.abs().mean(), (gradient - normals).norm(dim=-1).mean()


def eikonal_loss(gradient):
    """``L_eik``: mean (|grad s| - 1)^2."""
    return ((gradient.norm(dim=-1) - 1) ** 2).mean()


def semantic_loss(canonical, target):
    """``L_sem``: mean |x_bar - x_bar*|."""
    return (canonical - target).norm(dim=-1).mean()


def sdf_loss(sdf, target):
    """Direct supervision: mean |s - s*|."""
    return (sdf - target).abs().mean()


def semantic_sdf_losses(model, batch, weights):
    """Every term on one :class:`~omnifast.sdf.data.SDFBatch`; returns ``(total, {name: value})``
    with detached values for logging."""
    unit = model.scale
    surface = model(batch.surface_points, batch.params, batch.frames, with_gradient=weights.normal > 0)
    space = model(batch.space_points, batch.params, batch.frames, with_gradient=weights.eikonal > 0)
    terms = {}
    terms["iso"], terms["normal"] = iso_loss(surface.sdf / unit, surface.gradient
                                             if surface.gradient is not None else batch.surface_normals,
                                             batch.surface_normals)
    terms["eikonal"] = eikonal_loss(space.gradient) if space.gradient is not None else unit.new_zeros(())
    terms["semantic"] = semantic_loss(surface.canonical / unit, batch.surface_canonical / unit)
    terms["sdf"] = sdf_loss(space.sdf / unit, batch.space_sdf / unit)
    terms["correspondence"] = semantic_loss(space.canonical / unit, batch.space_canonical / unit)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
