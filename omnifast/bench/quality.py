"""The proposal sampler's quality on a trained generator: its render against a dense render of
the same rays (96 + 96 samples, evenly spaced depths) over cameras of the run's own dataset (its
labels follow EG3D's FFHQ camera distribution), for (a) the generator as trained and (b) the
same generator with a hair-like shell 2-3 cm outside the scalp added to its SDF correction,
geometry its prior does not know: only the probe can find it."""
import dataclasses
from types import SimpleNamespace

import torch
from torch import nn

from ..data import ImageDataset
from ..gan.generate import HeadGenerator
from ..ops.mesh import mesh_index
from ..render import Renderer
from ..sdf.data import PRIOR_SIGN
from .render import QUALITY_DENSE, image_agreement

HAIR = (0.02, 0.03)  # metres outside the canonical scalp


def coordinate_channels(planes, box_warp):
    """Five channels for tri-grid ``planes [N, 3, C, D, H, W]`` from whose sampled means
    :func:`sampled_points` reads the world point back: linear ramps through the texel centres
    (``x`` along volume 0's width, ``y`` along its height, ``z`` along volume 1's height) and each
    volume's constant 1, which fades exactly as the ramps do where the depth axis's few texels
    end (zero padding), so the ratios are exact inside the outermost width and height texels."""
    N, _, _, D, H, W = planes.shape

    def ramp(n):
        return ((torch.arange(n, dtype=planes.dtype, device=planes.device) * 2 + 1) / n - 1) * box_warp / 2

    channels = planes.new_zeros(N, 3, 5, D, H, W)
    channels[:, 0, 0] = 3 * ramp(W).view(1, 1, W)
    channels[:, 0, 1] = 3 * ramp(H).view(1, H, 1)
    channels[:, 1, 2] = 3 * ramp(H).view(1, H, 1)
    channels[:, 0, 3] = 3
    channels[:, 1, 4] = 3
    return channels


def sampled_points(features, far=10.0):
    """World points ``[..., 3]`` from the last five mean features (:func:`coordinate_channels`);
    ``far`` where the tri-grid has faded to nothing (outside its box)."""
    x, y, z, fade0, fade1 = features[..., -5:].unbind(-1)
    inside = (fade0 > 1e-6) & (fade1 > 1e-6)
    points = torch.stack([x / fade0, y / fade0, z / fade1], -1)
    return torch.where(inside.unsqueeze(-1), points, torch.full_like(points, far))


class HairShellDecoder(nn.Module):
    """A generator's decoder whose SDF correction also draws a shell ``HAIR`` metres outside
    the canonical FLAME mesh, above ``cut`` (canonical height, metres): the final SDF becomes
    about ``min(s + delta s, shell)``, with the mesh's canonical distance standing in for the
    prior ``s``. It reads the canonical point from the last five feature channels
    (:func:`coordinate_channels`)."""

    def __init__(self, decoder, warp):
        super().__init__()
        self.inner, self.warp = decoder, warp
        self.pose_dim = decoder.pose_dim
        flame = warp.flame
        self.canonical = flame.caps.verts(flame.canonical_verts()).detach()
        self.index = mesh_index(flame.caps.faces)
        low, high = self.canonical[..., 1].min(), self.canonical[..., 1].max()
        self.cut = float(low + 0.6 * (high - low))  # the upper 40% of the head

    def pose_bias(self, pose):
        return self.inner.pose_bias(pose)

    def decode(self, features, bias):
        colour, delta = self.inner.decode(features[..., :-5], bias)
        x = self.warp.to_flame(sampled_points(features)).to(self.canonical.dtype)  # canonical, FLAME metres
        distance = self.index.closest_point(x.reshape(-1, 3), self.canonical[0] if self.canonical.dim() == 3
                                            else self.canonical, sign=PRIOR_SIGN).distance.view(x.shape[:-1])
        inner, outer = HAIR
        shell = torch.maximum((distance - (inner + outer) / 2).abs() - (outer - inner) / 2, self.cut - x[..., 1])
        scale = self.warp.world_scale
        return colour, torch.minimum(delta, ((shell - distance) * scale).to(delta.dtype).unsqueeze(-1))


@torch.no_grad()
def proposal_quality(run_dir, *, cameras=16, resolution=256, samples=24, batch=4, device="cpu", log=print,
                     image_path=None):
    """Rows for the trained generator and its hair-shell twin: the proposal render (``samples``
    per ray, its training draws; the probe at a quarter of the resolution with 48 + 48 samples)
    against the dense ``QUALITY_DENSE`` render of the same rays, over the first ``cameras``
    labels of the run's dataset, seeds 0 .. cameras - 1. ``image_path``: also a PNG of the first
    camera of each (dense, proposal, and their difference times 10)."""
    head = HeadGenerator(run_dir, device)
    G, dataset = head.G, ImageDataset(head.config.dataset, head.layout)
    if len(dataset) < cameras:
        raise ValueError(f"cameras must be at most the dataset's {len(dataset)} labels, got {cameras}")
    base = G.renderer.config
    dense_config = dataclasses.replace(base, sampling="dense", depth_resolution=QUALITY_DENSE[0],
                                       depth_resolution_importance=QUALITY_DENSE[1], det_sampling=True)
    proposal_config = dataclasses.replace(base, sampling="proposal", proposal_samples=samples, depth_resolution=48,
                                          depth_resolution_importance=48, det_sampling=False)
    renderers = {}
    for name, config in (("dense", dense_config), ("proposal", proposal_config)):
        renderers[name] = Renderer(G.renderer.warp, config).to(head.device)
        renderers[name].sigmoid_beta = G.renderer.sigmoid_beta
    shell = HairShellDecoder(G.decoder, G.renderer.warp)
    rows, sheet = [], []
    for generator in ("trained", "hair shell"):
        outs = {"dense": [], "proposal": []}
        for start in range(0, cameras, batch):
            count = min(batch, cameras - start)
            labels = dataset.labels[start:start + count].to(head.device)
            z = torch.stack([torch.randn(G.config.z_dim, generator=torch.Generator().manual_seed(seed))
                             for seed in range(start, start + count)]).to(head.device)
            planes = G.planes(G.mapping(z, labels), "const")
            decoder = G.decoder
            if generator == "hair shell":
                planes = torch.cat([planes, coordinate_channels(planes, base.box_warp)], 2)
                decoder = shell
            for name, renderer in renderers.items():
                out = renderer(planes, decoder, labels, resolution, generator=torch.Generator().manual_seed(start))
                outs[name].append(SimpleNamespace(features=out.features[:, :3], depth=out.depth, opacity=out.opacity))
        joined = {name: SimpleNamespace(**{k: torch.cat([getattr(p, k) for p in parts]) for k in vars(parts[0])})
                  for name, parts in outs.items()}
        scale = G.renderer.warp.world_scale
        agreement = image_agreement(joined["proposal"], joined["dense"], scale)
        one = lambda out, i: SimpleNamespace(**{k: v[i:i + 1] for k, v in vars(out).items()})  # noqa: E731
        per_camera = [image_agreement(one(joined["proposal"], i), one(joined["dense"], i), scale)
                      for i in range(cameras)]
        row = {"op": "quality", "generator": generator, "run": run_dir, "cameras": cameras, "resolution": resolution,
               "samples_per_ray": samples, "probe": {"resolution": -(-resolution // base.probe_stride),
                                                     "samples_per_ray": [48, 48]},
               "quality_against": f"dense {QUALITY_DENSE[0]} + {QUALITY_DENSE[1]}, evenly spaced", **agreement,
               "worst_camera": {"psnr_db": min(c["psnr_db"] for c in per_camera),
                                "depth_mae_mm": max(c["depth_mae_mm"] or 0.0 for c in per_camera),
                                "silhouette_iou": min(c["silhouette_iou"] for c in per_camera)},
               "coverage": float((joined["dense"].opacity > 0.5).float().mean())}
        rows.append(row)
        sheet.append(torch.cat([joined["dense"].features[0], joined["proposal"].features[0],
                                (joined["proposal"].features[0] - joined["dense"].features[0]).abs() * 10], -1))
        log(f"{generator:<11} {resolution}^2 x {cameras} cameras, {samples} samples per ray: "
            f"PSNR {row['psnr_db']:.1f} dB, depth {row['depth_mae_mm']:.3f} mm, IoU {row['silhouette_iou']:.4f} "
            f"(worst camera {row['worst_camera']['psnr_db']:.1f} dB, {row['worst_camera']['depth_mae_mm']:.3f} mm, "
            f"{row['worst_camera']['silhouette_iou']:.4f}); the head covers {row['coverage']:.0%} of the frame")
    if image_path:
        from ..gan.train import write_png

        picture = (torch.cat(sheet, 1).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        write_png(image_path, picture)
        log(f"wrote {image_path}")
    return rows

