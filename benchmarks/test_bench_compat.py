"""pytest-benchmark for ``omnifast.eg3d.patch()`` on OmniAvatar's renderer: one training render
(coarse + importance + fine, forward + backward) through the local copy of the released renderer
module (`tests/omniavatar_local.py`), unpatched and patched, timed in turn in the same run, with
the floor that the patched generator is faster (the decoder and the semantic SDF are the same
code in both, so they bound the ratio).

    python -m pytest benchmarks/test_bench_compat.py --benchmark-json=out.json
"""
import os
import sys

import pytest
import torch

import omnifast
import omnifast.eg3d
from omnifast.bench import measure_peak_bytes, time_calls

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_compat import Decoder, SemanticSDF, camera_rays, fresh  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and omnifast._C_loader.compiled_backends()["cuda"] else "cpu"
BATCH = {"cpu": 1, "cuda": 4}[DEVICE]
CHANNELS, DEPTH, PLANE = 32, 3, 256   # OmniAvatar's tri-grid: 3 x 32 x 3 x 256^2
SPEED_FLOOR = 1.3


def render_call(module, planes, decoder, sdf_beta, rays):
    renderer = module.ImportanceRenderer({"with_sdf": False, "delta_geom": True, "im3dmm": SemanticSDF()}).to(DEVICE)
    renderer.sigmoid_beta.data.fill_(sdf_beta)
    features_3dmm = torch.randn(BATCH, 206, generator=torch.Generator().manual_seed(0)).to(DEVICE) * 0.3
    bi_planes = torch.zeros(BATCH, 0, CHANNELS, PLANE, PLANE, device=DEVICE)
    options = {"ray_start": 2.25, "ray_end": 3.3, "box_warp": 1.0, "triplane_depth": DEPTH,
               "depth_resolution": 48, "depth_resolution_importance": 48, "clamp_mode": "softplus",
               "disparity_space_sampling": False, "absorption": False, "force_background": False,
               "white_back": False}

    def call():
        torch.manual_seed(0)
        rgb, depth = renderer(planes, bi_planes, decoder, *rays, options, features_3dmm=features_3dmm)[:2]
        (rgb.square().mean() + depth.mean()).backward()
        planes.grad = None
        decoder.zero_grad(set_to_none=True)
    return call


@pytest.mark.parametrize("resolution", [64], ids=lambda r: f"{r}^2 rays x 48+48")
def test_patched_omniavatar_generator_is_faster(benchmark, resolution):
    torch.manual_seed(0)
    planes = (torch.randn(BATCH, 3, CHANNELS * DEPTH, PLANE, PLANE, device=DEVICE) * 0.5).requires_grad_()
    decoder = Decoder(CHANNELS, poses=106).to(DEVICE)
    rays = tuple(t.to(DEVICE) for t in camera_rays(BATCH, resolution))
    released = render_call(fresh("omniavatar_local"), planes, decoder, 0.02, rays)
    module = fresh("omniavatar_local")
    omnifast.eg3d.patch(module)
    patched = render_call(module, planes, decoder, 0.02, rays)
    timings = time_calls([released, patched], DEVICE, runs=3 if DEVICE == "cpu" else 9, max_seconds=300)
    released_ms, patched_ms = (t.median_s * 1e3 for t in timings)
    speedup = released_ms / patched_ms
    benchmark.extra_info.update(device=DEVICE, batch=BATCH, rays=resolution ** 2, samples_per_ray=[48, 48],
                                tri_grid=[3, CHANNELS, DEPTH, PLANE, PLANE], released_ms=released_ms,
                                patched_ms=patched_ms, speedup=speedup,
                                released_peak_bytes=measure_peak_bytes(released, DEVICE),
                                patched_peak_bytes=measure_peak_bytes(patched, DEVICE))
    benchmark.pedantic(patched, rounds=1, warmup_rounds=0)
    assert speedup >= SPEED_FLOOR, f"patched {patched_ms:.0f} ms vs released {released_ms:.0f} ms: {speedup:.2f}x"
