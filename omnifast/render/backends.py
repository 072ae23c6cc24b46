"""The renderer's two backends: every kernel it calls, once from omnifast and once from the
pure-PyTorch references (EG3D's own code path), behind one interface."""
import torch
from torch.utils.checkpoint import checkpoint

from .. import reference
from ..ops.composite import composite, importance_sample, importance_uniforms, merge_samples
from ..ops.triplane import SharedPlanes, triplane_sample


class Omnifast:
    """omnifast's kernels. Sampling and decoding run chunk by chunk and are recomputed in the
    backward (``recompute``): nothing per sample is kept from the tri-grid or the decoder, only
    their outputs, which the compositing kernel needs anyway."""
    name = kernels = "omnifast"
    recompute = True

    @staticmethod
    def prepare(planes):
        """The planes in the kernel's feature-last layout, once per render (a strided view of
        it is used without a copy by every chunk and every recomputation)."""
        return planes.movedim(2, -1).contiguous().movedim(-1, 2)

    @staticmethod
    def shared(planes, prepared, box_warp):
        """What every chunk of one render with gradients samples (``planes`` as the caller
        gave them, ``prepared`` their :meth:`prepare`): the chunks' plane gradients add into one
        buffer (:class:`omnifast.SharedPlanes`), not one planes-sized gradient per chunk summed
        by autograd, and the renderer releases the prepared copy once the forward is done."""
        if torch.is_grad_enabled() and planes.requires_grad:
            return SharedPlanes(planes, box_warp=box_warp, reduce="mean", prepared=prepared)
        return prepared

    @staticmethod
    def triplane(planes, coords, box_warp):
        if isinstance(planes, SharedPlanes):
            return planes.sample(coords)
        return triplane_sample(planes, coords, box_warp=box_warp, reduce="mean")

    composite = staticmethod(composite)
    merge = staticmethod(merge_samples)

    @staticmethod
    def importance(depths, weights, n, deterministic, generator, stratified=False):
        return importance_sample(depths, weights, n, deterministic=deterministic, generator=generator,
                                 stratified=stratified)


class Reference:
    """The pure-PyTorch references: ``grid_sample`` for the tri-grid, EG3D's marcher, pdf sampler
    and sort, every intermediate kept by autograd as EG3D's renderer keeps it."""
    name = kernels = "reference"
    recompute = False

    @staticmethod
    def prepare(planes):
        return planes

    @staticmethod
    def shared(planes, prepared, box_warp):
        return prepared

    @staticmethod
    def triplane(planes, coords, box_warp):
        # grid_sample has no double backward: coordinates with gradients (the eikonal loss) take
        # EG3D's gather-based sampler, as OmniAvatar's eikonal path does.
        sample = reference.triplane_sample_gather if coords.requires_grad else reference.triplane_sample
        return sample(planes, coords, box_warp=box_warp, reduce="mean")

    composite = staticmethod(reference.composite)
    merge = staticmethod(reference.merge_samples)

    @staticmethod
    def importance(depths, weights, n, deterministic, generator, stratified=False):
        """The same draws as :func:`omnifast.importance_sample`."""
        lead, samples = depths.shape[:-2], depths.shape[-2]
        rays = depths[..., 0].numel() // samples
        u = importance_uniforms(rays, n, deterministic=deterministic, generator=generator, device=depths.device,
                                dtype=depths.dtype, stratified=stratified)
        out = reference.sample_importance(depths.reshape(rays, samples), weights.detach().reshape(rays, -1),
                                          n, u.contiguous())
        return out.reshape(*lead, n, 1)


class ReferenceCheckpoint(Reference):
    """The strongest plain-PyTorch setup: EG3D's code path wrapped in ``torch.utils.checkpoint``
    over chunks of rays (``RenderConfig.chunk`` samples each), as a user short of memory wraps
    EG3D's renderer: per-sample intermediates are recomputed in the backward, not kept."""
    name = "reference+checkpoint"
    recompute = True


BACKENDS = {"omnifast": Omnifast, "reference": Reference, "reference+checkpoint": ReferenceCheckpoint}


def backend_named(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


def in_chunks(backend, fn, chunk, *per_ray, shared=()):
    """``fn(*shared, *per_ray_chunk)`` over chunks of rays (dim 1 of every ``per_ray`` tensor),
    outputs concatenated along dim 1 (``None`` outputs stay ``None``). omnifast runs chunks of
    about ``chunk`` samples, each recomputed in the backward when gradients are on, so nothing
    per sample is kept but the inputs; the reference runs everything at once, keeping what
    autograd keeps."""
    if not backend.recompute:
        return fn(*shared, *per_ray)
    N, M, S = per_ray[0].shape[:3]
    step = max(1, chunk // max(1, N * S))
    keep = torch.is_grad_enabled()
    parts = []
    for i in range(0, M, step):
        args = (*shared, *(t[:, i:i + step] for t in per_ray))
        parts.append(checkpoint(fn, *args, use_reentrant=False) if keep else fn(*args))
    if len(parts) == 1:
        return parts[0]
    return tuple(None if p[0] is None else torch.cat(p, 1) for p in zip(*parts))
