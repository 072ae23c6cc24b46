"""The semantic SDF network W(x | p) = (s, x_bar): an IGR-style MLP over a positional embedding of
the point, conditioned on the FLAME parameters, returning the signed distance to the posed head
and the point's correspondence in canonical space."""
import contextlib
import functools
import math
from collections import namedtuple
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.activation import softplus
from ..runs import check_fields

SDFOutput = namedtuple("SDFOutput", ["sdf", "canonical", "gradient"])


@dataclass
class NetworkConfig:
    """Sizes of :class:`SemanticSDF`; ``small`` trains on a laptop CPU in minutes, ``full`` is the
    GPU configuration (IGR/IDR's 8 x 256 with a skip at the middle)."""
    hidden: int = 128
    layers: int = 5           # hidden layers
    skip: int = 3             # the input is concatenated again before this hidden layer (0: none)
    frequencies: int = 4      # positional-embedding octaves
    condition: int = 64       # width of the parameter embedding
    softplus_beta: float = 100.0
    init_radius: float = 0.5  # geometric initialisation: a sphere of this radius in box units

    def __post_init__(self):
        check_fields(self, integers=[("hidden", 1), ("layers", 1), ("skip", 0), ("frequencies", 0), ("condition", 1)],
                     numbers=[("softplus_beta", 0, False), ("init_radius", 0, False)])
        if self.skip >= self.layers:
            raise ValueError(f"NetworkConfig: skip must be 0 (none) or a hidden layer after the first, below layers "
                             f"({self.layers}), got {self.skip}")

    @staticmethod
    def preset(name):
        presets = {"small": NetworkConfig(), "full": NetworkConfig(hidden=256, layers=8, skip=4, frequencies=6)}
        if name not in presets:
            raise ValueError(f"NetworkConfig.preset: name must be one of {tuple(presets)}, got {name!r}")
        return presets[name]


class SemanticSDF(nn.Module):
    """``W(x | p) = (s, x_bar)``.

    Points are mapped into the box ``[-1, 1]^3`` around the head (one isotropic scale, so ``s``
    stays a metric distance); outside the box the field continues analytically: the value at the
    nearest box point plus the distance to it for ``s``, the same offset for ``x_bar``. The
    initial field is a sphere's SDF (geometric initialisation, independent of ``p``) and the
    initial correspondence is the identity.

    Args:
        param_dim: length of the FLAME parameter vector.
        box_min, box_max: ``[3]`` corners of the box (metres) in which the network is evaluated.
        param_scale: ``[param_dim]`` typical size of each parameter (inputs are divided by it).
        config: :class:`NetworkConfig`.
    """

    def __init__(self, param_dim, box_min, box_max, param_scale=None, config=None):
        super().__init__()
        self.config = config = config or NetworkConfig()
        box_min, box_max = torch.as_tensor(box_min, dtype=torch.float32), torch.as_tensor(box_max, dtype=torch.float32)
        self.register_buffer("centre", (box_min + box_max) / 2)
        self.register_buffer("scale", ((box_max - box_min) / 2).max().reshape(()))
        scale = torch.ones(param_dim) if param_scale is None else torch.as_tensor(param_scale, dtype=torch.float32)
        self.register_buffer("param_scale", scale.clamp_min(1e-6))
        self.param_dim = param_dim
        embed = 3 * (1 + 2 * config.frequencies)
        self.condition = nn.Sequential(nn.Linear(param_dim, config.condition), nn.SiLU(),
                                       nn.Linear(config.condition, config.condition))
        self.layers = nn.ModuleList()
        self.condition_in = nn.ModuleDict()
        width_in = embed
        for i in range(config.layers):
            if config.skip and i == config.skip:
                width_in += embed
            self.layers.append(nn.Linear(width_in, config.hidden))
            if i == 0 or (config.skip and i == config.skip):
                self.condition_in[str(i)] = nn.Linear(config.condition, config.hidden, bias=False)
            width_in = config.hidden
        self.sdf_out = nn.Linear(config.hidden, 1)
        self.offset_out = nn.Linear(config.hidden, 3)
        self.activation = nn.Softplus(beta=config.softplus_beta)
        self._geometric_init(embed)

    def _geometric_init(self, embed):
        """Atzmon and Lipman's initialisation (as IDR/NeuS extend it to embeddings): the MLP
        starts as |x| - r; the embedding's sines and the parameters enter with zero weight."""
        c = self.config
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2) / math.sqrt(c.hidden))
                nn.init.zeros_(layer.bias)
                if i == 0:
                    layer.weight[:, 3:] = 0
                elif c.skip and i == c.skip:
                    layer.weight[:, -(embed - 3):] = 0
            for module in self.condition_in.values():
                nn.init.zeros_(module.weight)
            nn.init.normal_(self.sdf_out.weight, math.sqrt(math.pi) / math.sqrt(c.hidden), 1e-4)
            nn.init.constant_(self.sdf_out.bias, -c.init_radius)
            nn.init.zeros_(self.offset_out.weight)
            nn.init.zeros_(self.offset_out.bias)

    def _embed(self, x):
        parts = [x]
        for k in range(self.config.frequencies):
            parts += [torch.sin((2.0 ** k) * math.pi * x), torch.cos((2.0 ** k) * math.pi * x)]
        return torch.cat(parts, -1)

    def _field(self, x, cond, activation):
        """Network output in box units for box coordinates ``x [B, N, 3]``."""
        embedded = self._embed(x)
        h = embedded
        for i, layer in enumerate(self.layers):
            if self.config.skip and i == self.config.skip:
                h = torch.cat([h, embedded], -1) / math.sqrt(2)
            h = layer(h)
            if str(i) in self.condition_in:
                h = h + self.condition_in[str(i)](cond).unsqueeze(1)
            h = activation(h)
        return self.sdf_out(h).squeeze(-1), self.offset_out(h)

    def forward(self, points, params, frames=None, *, with_gradient=False, create_graph=True,
                fast_softplus=False):
        """Evaluate the field.

        Args:
            points: ``[B, N, 3]`` observation-space points (metres).
            params: ``[B, param_dim]`` FLAME parameters of each batch item.
            frames: ``[B, 4, 4]`` rigid head motions (:meth:`omnifast.flame.Flame.head_frame`),
                undone before the MLP so that it learns only the non-rigid rest; identity when
                omitted.
            with_gradient: also return ``grad_x s`` (autograd; differentiable again with
                ``create_graph``, as the eikonal and normal losses need).
            fast_softplus: the activations by :func:`omnifast.softplus` (the same values to
                rounding; about twice as fast as PyTorch's on the CPU in float32).
        Returns:
            ``SDFOutput(sdf [B, N], canonical [B, N, 3], gradient [B, N, 3] or None)``.
        """
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"SemanticSDF: points must be [B, N, 3], got {list(points.shape)}")
        if frames is not None and frames.shape != (points.shape[0], 4, 4):
            raise ValueError(f"SemanticSDF: frames must be [B, 4, 4] with the B of points "
                             f"({points.shape[0]}), got {list(frames.shape)}")
        if params.dim() != 2 or params.shape != (points.shape[0], self.param_dim):
            raise ValueError(f"SemanticSDF: params must be [B, {self.param_dim}] with the B of points "
                             f"({points.shape[0]}), got {list(params.shape)}")
        if with_gradient and not points.requires_grad:
            points = points.detach().requires_grad_(True)
        with torch.enable_grad() if with_gradient else contextlib.nullcontext():
            unposed = points
            if frames is not None:
                rotation, translation = frames[:, None, :3, :3], frames[:, None, :3, 3]
                unposed = ((points - translation).unsqueeze(-2) @ rotation).squeeze(-2)  # R^T (x - t)
            local = (unposed - self.centre) / self.scale
            inside = local.clamp(-1, 1)
            # Distance beyond the box; the clamp keeps its derivatives finite (zero) inside.
            outside = ((local - inside) ** 2).sum(-1).clamp_min(1e-20).sqrt() - 1e-10
            cond = self.condition(params / self.param_scale)
            activation = self.activation
            if fast_softplus:
                activation = functools.partial(softplus, beta=activation.beta, threshold=activation.threshold)
            sdf, offset = self._field(inside, cond, activation)
            sdf = (sdf + outside) * self.scale
            canonical = unposed + offset * self.scale
            gradient = None
            if with_gradient:
                gradient, = torch.autograd.grad(sdf.sum(), points, create_graph=create_graph)
        return SDFOutput(sdf, canonical, gradient)
