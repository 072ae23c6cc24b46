"""OmniAvatar's decoder: tri-grid features and an expression/pose embedding to colour features
and a density (or SDF) correction."""
import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("sigmoid", "lrelu", "none")


class FullyConnected(nn.Module):
    """StyleGAN2's ``FullyConnectedLayer`` (linear): weights stored divided by ``lr_mul`` and used
    times ``lr_mul / sqrt(in_features)`` (equalised learning rate), the bias times ``lr_mul``."""

    def __init__(self, in_features, out_features, lr_mul=1.0, bias_init=0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def effective(self):
        """``(weight, bias)`` as applied."""
        b = self.bias if self.bias_gain == 1 else self.bias * self.bias_gain
        return self.weight * self.weight_gain, b

    def forward(self, x):
        w, b = self.effective()
        return torch.addmm(b.unsqueeze(0), x.reshape(-1, x.shape[-1]), w.t()).reshape(*x.shape[:-1], -1)


def activate_colour(x, activation):
    """OmniAvatar's colour activations: ``"sigmoid"`` (MipNeRF's sigmoid * 1.002 - 0.001),
    ``"lrelu"`` (leaky ReLU(0.2) * sqrt 2), anything else none."""
    if activation == "sigmoid":
        return torch.sigmoid(x) * (1 + 2 * 0.001) - 0.001
    if activation == "lrelu":
        return F.leaky_relu(x, 0.2) * math.sqrt(2)
    return x


class OSGDecoder(nn.Module):
    """OmniAvatar's ``OSGDecoder``: the pose part of the FLAME parameters (expression, neck and jaw:
    everything after the shape coefficients, OmniAvatar's last 106 numbers) through
    ``FC(P, 32) + softplus``, concatenated after the 32 plane features, then ``FC(64, 64)``,
    softplus, ``FC(64, 1 + 32)``. Output channel 0 is the density (or SDF) correction, raw; the
    rest are colour features through ``activation`` (``"sigmoid"``: sigmoid * 1.002 - 0.001,
    ``"lrelu"``: leaky ReLU(0.2) * sqrt 2, ``"none"``).

    The pose embedding is one vector per image, so the first layer's pose half is applied once per
    image as a bias rather than concatenated to every sample (the same function, less memory).

    Args:
        pose_dim: length of the pose part (0: no pose input).
        pose_embed: feed ``[sin(pi p), cos(pi p), p]`` instead of ``p`` (OmniAvatar's option).
        pose_noise: std of the Gaussian pose perturbation in training (OmniAvatar's
            ``pose_perturb_magtinude``; the neck's three numbers get a fifth of it).
    """

    def __init__(self, n_features=32, *, pose_dim=106, hidden=64, out_features=32, activation="sigmoid",
                 lr_mul=1.0, pose_embed=False, pose_noise=0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"OSGDecoder: activation must be one of {ACTIVATIONS}, got {activation!r}")
        for name, value in (("n_features", n_features), ("hidden", hidden), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OSGDecoder: {name} must be a positive integer, got {value!r}")
        if isinstance(pose_dim, bool) or not isinstance(pose_dim, int) or pose_dim < 0:
            raise ValueError(f"OSGDecoder: pose_dim must be a non-negative integer, got {pose_dim!r}")
        self.n_features, self.pose_dim, self.out_features = n_features, pose_dim, out_features
        self.activation, self.pose_embed, self.pose_noise = activation, pose_embed, float(pose_noise)
        pose_width = 32 if pose_dim else 0
        if pose_dim:
            self.pose_net = FullyConnected(pose_dim * (3 if pose_embed else 1), pose_width, lr_mul)
        self.hidden = FullyConnected(n_features + pose_width, hidden, lr_mul)
        self.output = FullyConnected(hidden, 1 + out_features, lr_mul)

    def pose_bias(self, pose):
        """``[N, pose_dim]`` -> the first layer's bias per image ``[N, hidden]`` (the pose
        embedding through the pose half of its weights, plus its bias)."""
        w, b = self.hidden.effective()
        if not self.pose_dim:
            return b.unsqueeze(0)
        if pose is None or pose.dim() != 2 or pose.shape[1] != self.pose_dim:
            got = None if pose is None else list(pose.shape)
            raise ValueError(f"OSGDecoder: pose must be [N, {self.pose_dim}], got {got}")
        if self.training and self.pose_noise > 0:
            scale = torch.ones(self.pose_dim, dtype=pose.dtype, device=pose.device)
            scale[-6:-3] = 0.2  # the neck
            pose = pose + torch.randn_like(pose) * scale * self.pose_noise
        if self.pose_embed:
            pose = torch.cat([torch.sin(math.pi * pose), torch.cos(math.pi * pose), pose], -1)
        embedding = F.softplus(self.pose_net(pose))
        return torch.addmm(b.unsqueeze(0), embedding, w[:, self.n_features:].t())

    def decode(self, features, bias):
        """``features [N, M, n_features]`` and ``bias [N, hidden]`` (:meth:`pose_bias`) ->
        ``(colour features [N, M, out], correction [N, M, 1])``."""
        w = self.hidden.weight[:, :self.n_features] * self.hidden.weight_gain
        h = F.softplus(torch.baddbmm(bias.unsqueeze(1), features, w.t().expand(features.shape[0], -1, -1)))
        out = self.output(h)
        colour = activate_colour(out[..., 1:], self.activation)
        # A copy, not a view: a caller keeping the correction of many chunks would otherwise
        # keep each chunk's whole decoder output alive through it.
        return colour, out[..., :1].contiguous()

    def forward(self, features, pose=None):
        """``features [N, M, n_features]`` (plane features already averaged), ``pose
        [N, pose_dim]`` -> ``(colour features [N, M, out], correction [N, M, 1])``."""
        return self.decode(features, self.pose_bias(pose))
