"""Evaluating a semantic SDF on held-out FLAME parameters against the exact ground truth."""
import torch

from ..geometry import jitter
from .data import PRIOR_SIGN

HELD_OUT_SEED = 1_000_003  # offset from the training seed: held-out draws never repeat the stream
NEAR_SCALE = 0.01          # near-surface queries: surface samples + N(0, (1% of the diagonal)^2)


def held_out_params(run, count):
    """``[count, P]`` parameter vectors from the training distribution, drawn from a generator
    of their own (disjoint from the training stream)."""
    g = torch.Generator(run.config.device).manual_seed(run.config.seed + HELD_OUT_SEED)
    return run.config.distribution.sample(run.flame.layout, count, g, run.config.device,
                                          run.sampler.canonical_verts.dtype)


def evaluate(run, params, points_per_mesh=4096):
    """Metrics of ``run.model`` on ``params [M, P]`` (one mesh at a time; points drawn from a
    fixed generator, so the numbers are reproducible):

    - ``near_*``: |s - s*| at points near the surface (surface samples moved by Gaussian noise of
      1% of the canonical bounding-box diagonal): mean and 95th percentile;
    - ``correspondence_*``: |x_bar - x_bar*| at surface samples (caps included);
    - ``surface_sdf_mean``: |s| at surface samples;
    - ``eikonal_residual``: mean | |grad s| - 1 | at near and uniform box points;
    - each distance also as ``*_pct``: percent of the diagonal (``diagonal``, metres).
    """
    model, sampler, flame = run.model, run.sampler, run.flame
    device = sampler.canonical_verts.device
    g = torch.Generator(device).manual_seed(run.config.seed + HELD_OUT_SEED + 1)
    near_err, corr_err, surface_sdf, eikonal, on_cap = [], [], [], [], []
    was_training = model.training
    model.eval()
    for i in range(params.shape[0]):
        p = params[i:i + 1].to(device, sampler.canonical_verts.dtype)
        frames = flame.head_frame(p)
        with torch.no_grad():
            verts, surface, face, _, canonical = sampler.surface(p, points_per_mesh, g)
            near = jitter(surface, NEAR_SCALE * sampler.diagonal, g)
            truth = sampler.index.closest_point(near, verts, sign=PRIOR_SIGN).distance
            out_near = model(near, p, frames)
            out_surface = model(surface, p, frames)
        near_err.append((out_near.sdf - truth).abs().flatten())
        corr_err.append((out_surface.canonical - canonical).norm(dim=-1).flatten())
        surface_sdf.append(out_surface.sdf.abs().flatten())
        on_cap.append(flame.caps.on_cap(face).flatten())
        box = sampler.box_points(1, points_per_mesh, surface, g)
        grad = model(torch.cat([near, box], 1), p, frames, with_gradient=True, create_graph=False).gradient
        eikonal.append((grad.norm(dim=-1) - 1).abs().flatten().detach())
    model.train(was_training)
    near_err, corr_err = torch.cat(near_err).double(), torch.cat(corr_err).double()
    diagonal = sampler.diagonal
    metrics = {
        "meshes": int(params.shape[0]), "points_per_mesh": int(points_per_mesh), "diagonal": diagonal,
        "near_mean": float(near_err.mean()), "near_p95": float(near_err.quantile(0.95)),
        "correspondence_mean": float(corr_err.mean()), "correspondence_p95": float(corr_err.quantile(0.95)),
        "surface_sdf_mean": float(torch.cat(surface_sdf).mean()),
        "eikonal_residual": float(torch.cat(eikonal).mean()),
        "cap_fraction": float(torch.cat(on_cap).double().mean()),
    }
    for key in ("near_mean", "near_p95", "correspondence_mean", "correspondence_p95", "surface_sdf_mean"):
        metrics[f"{key}_pct"] = 100 * metrics[key] / diagonal
    return metrics


def format_metrics(metrics):
    """A small table of the metrics (metres and percent of the diagonal)."""
    rows = [("near-surface |s - s*| mean", "near_mean"), ("near-surface |s - s*| p95", "near_p95"),
            ("surface correspondence mean", "correspondence_mean"),
            ("surface correspondence p95", "correspondence_p95"), ("surface |s| mean", "surface_sdf_mean")]
    lines = [f"held-out meshes: {metrics['meshes']} x {metrics['points_per_mesh']} points; "
             f"bounding-box diagonal {metrics['diagonal']:.4f} m",
             f"{'metric':<30} {'mm':>9} {'% diagonal':>11}"]
    for label, key in rows:
        lines.append(f"{label:<30} {metrics[key] * 1e3:>9.3f} {metrics[key + '_pct']:>10.3f}%")
    lines.append(f"{'eikonal residual | |grad s| - 1 |':<30} {metrics['eikonal_residual']:>9.4f}")
    lines.append(f"{'surface samples on hole caps':<30} {100 * metrics['cap_fraction']:>9.1f}%")
    return "\n".join(lines)
