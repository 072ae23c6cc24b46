"""Drop-ins for OmniAvatar's renderer (its ray marcher differs from EG3D's); see omnifast.eg3d
for the shared functions and ``patch``."""
import torch

from .ops.composite import composite
from .reference.rendering import march

__all__ = ["MipRayMarcher2"]


class MipRayMarcher2(torch.nn.Module):
    """OmniAvatar's ray marcher: the midpoint path without ``x2 - 1`` (its generator rescales
    later), the absorption path (last interval 1e10) with it, and ``force_background``."""

    def _march(self, colors, densities, depths, rendering_options, mode):
        if rendering_options.get('force_background', False):
            # It rewrites the last weight before compositing: the reference chain does that.
            out, depth, _, weights = march(colors, densities, depths, mode=mode,
                                           white_back=rendering_options.get('white_back', False),
                                           force_background=True)
            return out, depth, weights
        out = composite(colors, densities, depths, field_type="density", mode=mode,
                        white_back=rendering_options.get('white_back', False),
                        return_weights=True)
        return out.features, out.depth, out.weights

    def run_forward(self, colors, densities, depths, rendering_options):
        assert rendering_options['clamp_mode'] == 'softplus', \
            "MipRayMarcher only supports `clamp_mode`=`softplus`!"
        return self._march(colors, densities, depths, rendering_options, "midpoint")

    def run_forward_absorption(self, colors, densities, depths, rendering_options):
        assert rendering_options['clamp_mode'] == 'softplus', \
            "MipRayMarcher only supports `clamp_mode`=`softplus`!"
        rgb, depth, weights = self._march(colors, densities, depths, rendering_options,
                                          "absorption")
        return rgb * 2 - 1, depth, weights

    def forward(self, colors, densities, depths, rendering_options):
        if rendering_options.get('absorption', False):
            return self.run_forward_absorption(colors, densities, depths, rendering_options)
        return self.run_forward(colors, densities, depths, rendering_options)
