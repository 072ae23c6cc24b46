"""The render benchmark: one training render of OmniAvatar's renderer (coarse + fine samples,
the warp through a semantic SDF, the tri-grid, the decoder, compositing), forward and
forward + backward, for each backend in the same run, with peak memory, the warp's share of the
time, and the largest resolution each backend fits in a memory budget; and omnifast with the
FLAME mesh's exact prior as the warp (``warp="mesh"``; its reference, a brute-force search over
every face, is for tests only)."""
import math
import tempfile
import time
from dataclasses import dataclass

import torch

from ..flame import Flame, make_synthetic_flame
from ..geometry import camera_labels, ffhq_intrinsics, orbit_cam2world
from ..render import MeshWarp, OSGDecoder, RenderConfig, Renderer, SDFWarp, world_scale_for
from ..sdf.data import SDFSampler
from ..sdf.network import NetworkConfig, SemanticSDF
from .measure import _sync, measure_peak_bytes

RENDER_PASSES = ("forward", "forward+backward")
BACKENDS = ("omnifast", "reference")


@dataclass
class RenderCase:
    resolution: int
    coarse: int
    fine: int
    batch: int
    note: str = ""

    @property
    def name(self):
        return f"{self.resolution}px {self.coarse}+{self.fine} x{self.batch}"


def render_cases(device, quick=False):
    """EG3D's 48 + 48 samples at 64^2 and 128^2 (batch 1 on the CPU, 4 on a GPU) and 256^2 (on
    the CPU with 16 + 16 samples, which keeps the reference's run within minutes)."""
    if quick:
        return [RenderCase(16, 8, 8, 1, "harness check"), RenderCase(32, 8, 8, 1, "harness check")]
    if torch.device(device).type == "cuda":
        return [RenderCase(r, 48, 48, 4) for r in (64, 128, 256)]
    return [RenderCase(64, 48, 48, 1), RenderCase(128, 48, 48, 1),
            RenderCase(256, 16, 16, 1, "CPU: 16 + 16 samples per ray at 256^2")]


def untrained_warps(device, network="small"):
    """``{"sdf": SDFWarp, "mesh": MeshWarp}`` on the synthetic FLAME model (100 shape, 100
    expression parameters) with a semantic SDF of the ``network`` preset, untrained: what a
    warp costs does not depend on its weights."""
    folder = tempfile.mkdtemp(prefix="omnifast-bench-flame-")
    make_synthetic_flame(folder)
    flame = Flame(folder, 100, 100)
    sampler = SDFSampler(flame)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sdf = SemanticSDF(flame.layout.size, sampler.box_min, sampler.box_max,
                          config=NetworkConfig.preset(network)).eval()
    scale = world_scale_for(float(sdf.scale), 1.0)
    return {"sdf": SDFWarp(flame, sdf, scale).to(device),
            "mesh": MeshWarp(flame, sdf.centre.detach(), scale).to(device)}


class _TimedWarp(torch.nn.Module):
    """The renderer's warp, timed (the warp's share of a render)."""

    def __init__(self, warp, device):
        super().__init__()
        self.inner, self.device, self.seconds = warp, device, 0.0

    @property
    def param_dim(self):
        return self.inner.param_dim

    @property
    def flame(self):
        return self.inner.flame

    def forward(self, points, params, backend="omnifast"):
        _sync(self.device)
        start = time.perf_counter()
        out = self.inner(points, params, backend)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


class RenderBench:
    """A synthetic FLAME model, a semantic SDF of the given size (``small`` on the CPU, ``full``
    on a GPU; untrained: its cost does not depend on its weights), an OmniAvatar decoder and a
    tri-grid 3 x 32 x 3 x 256^2 per image."""

    def __init__(self, device, network=None, grid=256):
        self.device = torch.device(device)
        self.network = network or ("full" if self.device.type == "cuda" else "small")
        warps = untrained_warps(self.device, self.network)
        self.warps = {name: _TimedWarp(warp, self.device) for name, warp in warps.items()}
        self.layout, self.grid = warps["sdf"].flame.layout, grid
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.decoder = OSGDecoder(pose_dim=self.layout.size - self.layout.n_shape).to(self.device)

    def inputs(self, case):
        g = torch.Generator().manual_seed(case.resolution)
        planes = torch.randn(case.batch, 3, 32, 3, self.grid, self.grid, generator=g).to(self.device)
        cam2world = orbit_cam2world(math.pi / 2, math.pi / 2, yaw_std=0.3, pitch_std=0.15, batch=case.batch,
                                    generator=g)
        params = torch.randn(case.batch, self.layout.size, generator=g) * 0.5
        labels = torch.cat([camera_labels(cam2world, ffhq_intrinsics()), params], -1).to(self.device)
        return planes.requires_grad_(True), labels

    def runner(self, case, backend, pass_name, warp="sdf"):
        """A function doing one render (and its backward) of the case."""
        config = RenderConfig(depth_resolution=case.coarse, depth_resolution_importance=case.fine)
        renderer = Renderer(self.warps[warp], config).to(self.device)
        planes, labels = self.inputs(case)

        def run():
            generator = torch.Generator(self.device).manual_seed(1)
            if pass_name == "forward":
                with torch.no_grad():
                    return renderer(planes, self.decoder, labels, case.resolution, backend=backend,
                                    generator=generator).features
            out = renderer(planes, self.decoder, labels, case.resolution, backend=backend, generator=generator)
            (out.features.square().mean() + out.delta.square().mean()).backward()
            planes.grad = None
            return out.features.detach()
        return run

    def measure(self, case, backend, pass_name, runs, warp="sdf"):
        """``{ms, peak_bytes, warp_ms, warp_share}``: the median of ``runs`` calls, the peak of
        the first."""
        run = self.runner(case, backend, pass_name, warp)
        timed = self.warps[warp]
        times, warp_times, peak = [], [], None
        for i in range(runs):
            timed.seconds = 0.0
            _sync(self.device)
            start = time.perf_counter()
            if i == 0:
                peak = measure_peak_bytes(run, self.device)
            else:
                run()
            _sync(self.device)
            times.append(time.perf_counter() - start)
            warp_times.append(timed.seconds)
        ms, warp_ms = sorted(times)[len(times) // 2] * 1e3, sorted(warp_times)[len(times) // 2] * 1e3
        return {"ms": ms, "peak_bytes": peak, "warp_ms": warp_ms, "warp_share": warp_ms / ms}


def max_resolution(rows, budget_bytes):
    """The largest square resolution that fits ``budget_bytes`` for one backend: a line through
    the forward+backward peaks of the smallest and largest resolutions sampled like the first
    case (EG3D's 48 + 48), bytes = fixed + per_pixel * pixels, solved for the pixels.
    ``(resolution, per_pixel, fixed)``; None where unmeasured."""
    trained = [r for r in rows if r["pass"] == "forward+backward" and r["peak_bytes"] and r["warp"] == "sdf"]
    points = sorted((r["resolution"] ** 2 * r["batch"], r["peak_bytes"]) for r in trained
                    if r["samples_per_ray"] == trained[0]["samples_per_ray"]) if trained else []
    if len(points) < 2:
        return None, None, None
    (p0, b0), (p1, b1) = points[0], points[-1]
    per_pixel = max((b1 - b0) / (p1 - p0), 1.0)
    fixed = max(0.0, b1 - per_pixel * p1)
    batch = rows[0]["batch"]
    pixels = (budget_bytes - fixed) / per_pixel / batch
    return (int(math.isqrt(int(pixels))) if pixels > 0 else 0), per_pixel * batch, fixed


def run_render_bench(device, quick=False, cases=None, runs=None, memory_budget=None, passes=None):
    """Every case, backend and pass; returns ``(rows, max_resolution per backend, budget)``."""
    from .measure import return_large_blocks

    device = torch.device(device)
    return_large_blocks()
    bench = RenderBench(device)
    runs = runs or (3 if device.type == "cuda" else 1)
    if memory_budget is None:
        memory_budget = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
                         else 16 * 2 ** 30)
    warm = RenderCase(16, 8, 8, 1)
    for backend, warp in (*((b, "sdf") for b in BACKENDS), ("omnifast", "mesh")):
        bench.runner(warm, backend, "forward+backward", warp)()
    print(f"\nrender: one training render, W '{bench.network}', tri-grid 3 x 32 x 3 x {bench.grid}^2; "
        f"peak = extra MiB during the pass", flush=True)
    print(f"{'case':<24} {'pass':<17} {'omnifast ms':>12} {'reference ms':>13} {'speedup':>8} "
        f"{'peak MiB':>9} {'ref MiB':>9} {'memory':>7} {'warp share':>11}")
    rows = []
    for case in render_cases(device, quick)[:cases]:
        for pass_name in [p for p in RENDER_PASSES if passes is None or p in passes]:
            got = {b: bench.measure(case, b, pass_name, runs) for b in BACKENDS}
            mesh = bench.measure(case, "omnifast", pass_name, runs, warp="mesh")
            for backend, warp, m in (*((b, "sdf", m) for b, m in got.items()), ("omnifast", "mesh", mesh)):
                rows.append({"op": "render", "backend": backend, "warp": warp, "resolution": case.resolution,
                             "pass": pass_name, "batch": case.batch, "samples_per_ray": [case.coarse, case.fine],
                             "sdf_network": bench.network if warp == "sdf" else None, "note": case.note, **m})
            ours, ref = got["omnifast"], got["reference"]
            ratio = (ours["peak_bytes"] / ref["peak_bytes"]) if ours["peak_bytes"] and ref["peak_bytes"] else None
            print(f"{case.name:<24} {pass_name:<17} {ours['ms']:>12.0f} {ref['ms']:>13.0f} "
                f"{ref['ms'] / ours['ms']:>7.2f}x {_mib(ours['peak_bytes']):>9} {_mib(ref['peak_bytes']):>9} "
                f"{'n/a' if ratio is None else f'{ratio:.2f}':>7} "
                f"{ours['warp_share']:>5.0%}/{ref['warp_share']:<5.0%}", flush=True)
            print(f"{'':<24} {'  warp=mesh':<17} {mesh['ms']:>12.0f} {'':>13} {ref['ms'] / mesh['ms']:>7.2f}x "
                  f"{_mib(mesh['peak_bytes']):>9} {'':>9} {'':>7} {mesh['warp_share']:>5.0%}", flush=True)
    limits = {}
    for backend in BACKENDS:
        resolution, per_pixel, fixed = max_resolution([r for r in rows if r["backend"] == backend], memory_budget)
        limits[backend] = resolution
        for row in rows:
            if row["backend"] == backend and row["warp"] == "sdf":
                row.update(max_resolution=resolution, bytes_per_pixel=per_pixel, fixed_bytes=fixed,
                           memory_budget_bytes=memory_budget)
        if resolution is not None:
            print(f"largest {rows[0]['batch']}-image training render in {memory_budget / 2 ** 30:.1f} GiB, "
                f"{backend}: {resolution}^2 ({per_pixel / 1024:.1f} KiB per pixel)", flush=True)
    return rows, limits, memory_budget


def _mib(value):
    return "n/a" if value is None else f"{value / 2 ** 20:.0f}"
