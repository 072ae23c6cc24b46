"""The render benchmark: one training render of OmniAvatar's renderer (the warp through a
semantic SDF, the tri-grid, the decoder, compositing), forward and forward + backward, for each
contender in the same run, with peak memory, the warp's share of the time, and the largest
resolution each fits in a memory budget. The contenders: omnifast's kernels, EG3D's plain
PyTorch path as it is (``reference``: every intermediate kept) and wrapped in
``torch.utils.checkpoint`` over chunks of rays (``reference+checkpoint``, what a user short of
memory does), all with EG3D's coarse + fine samples; omnifast with the FLAME mesh's exact prior
as the warp (``warp="mesh"``); and omnifast's proposal sampler (``sampling="proposal"``), whose
rows also carry its agreement with a dense render of the same rays."""
import math
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..flame import Flame, make_synthetic_flame
from ..geometry import camera_labels, ffhq_intrinsics, orbit_cam2world
from ..render import MeshWarp, OSGDecoder, RenderConfig, Renderer, SDFWarp, world_scale_for
from ..sdf.data import SDFSampler
from ..sdf.network import NetworkConfig, SemanticSDF
from .measure import _sync, measure_peak_bytes

RENDER_PASSES = ("forward", "forward+backward")
BACKENDS = ("omnifast", "reference", "reference+checkpoint")


@dataclass(frozen=True)
class Setup:
    """One contender of the render benchmark: kernels, sampling and warp."""
    backend: str
    sampling: str = "dense"
    warp: str = "sdf"

    @property
    def name(self):
        return " ".join([self.backend, *([self.sampling] if self.sampling != "dense" else []),
                         *([f"warp={self.warp}"] if self.warp != "sdf" else [])])


OMNIFAST, PROPOSAL = Setup("omnifast"), Setup("omnifast", "proposal")
SETUPS = (OMNIFAST, Setup("reference"), Setup("reference+checkpoint"), Setup("omnifast", warp="mesh"), PROPOSAL)
# Quality of the proposal rows: against this dense render of the same rays (evenly spaced depths).
QUALITY_DENSE = (96, 96)


@dataclass
class RenderCase:
    resolution: int
    coarse: int
    fine: int
    batch: int
    note: str = ""
    setups: tuple = SETUPS
    proposal: int = 24  # samples per ray of the proposal rows

    @property
    def name(self):
        return f"{self.resolution}px {self.coarse}+{self.fine} x{self.batch}"


def render_cases(device, quick=False):
    """EG3D's 48 + 48 samples (the proposal rows: 24 per ray, its probe at a quarter of the
    resolution with the same 48 + 48) at 128^2, 256^2 and 512^2 (batch 4 on a GPU; the plain
    reference, which keeps every intermediate, to 256^2). On the CPU (batch 1) 64^2 too, and
    the reference backends to 128^2 only (minutes per render beyond)."""
    if quick:
        return [RenderCase(r, 8, 8, 1, "harness check", proposal=6) for r in (16, 32)]
    if torch.device(device).type == "cuda":
        return [RenderCase(r, 48, 48, 4, setups=SETUPS if r < 512 else tuple(s for s in SETUPS if s.backend !=
                                                                             "reference")) for r in (128, 256, 512)]
    cpu_only = "CPU: the reference backends measured to 128^2 (minutes per render beyond)"
    return [RenderCase(64, 48, 48, 1), RenderCase(128, 48, 48, 1),
            *(RenderCase(r, 48, 48, 1, cpu_only, setups=(OMNIFAST, PROPOSAL)) for r in (256, 512))]


def untrained_warps(device, network="small"):
    """``{"sdf": SDFWarp, "mesh": MeshWarp}`` on the synthetic FLAME model (100 shape, 100
    expression parameters) with a semantic SDF of the ``network`` preset, untrained: what a
    warp costs hardly depends on its weights (PyTorch's softplus is slower on the larger
    activations of an untrained W, omnifast's too: the two backends' ratio measured the same,
    about 1.2x, on it and on the demo's trained W)."""
    with tempfile.TemporaryDirectory(prefix="omnifast-bench-flame-") as folder:  # read once, then removed
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
    on a GPU; untrained: its cost does not depend on its weights), an OmniAvatar decoder whose
    correction starts at zero (as the generator's: the prior's head is the surface) and a smooth
    random tri-grid 3 x 32 x 3 x 256^2 per image."""

    def __init__(self, device, network=None, grid=256):
        self.device = torch.device(device)
        self.network = network or ("full" if self.device.type == "cuda" else "small")
        warps = untrained_warps(self.device, self.network)
        self.warps = {name: _TimedWarp(warp, self.device) for name, warp in warps.items()}
        self.layout, self.grid = warps["sdf"].flame.layout, grid
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.decoder = OSGDecoder(pose_dim=self.layout.size - self.layout.n_shape).to(self.device)
        with torch.no_grad():
            self.decoder.output.weight[0].zero_()
            self.decoder.output.bias[0].zero_()

    def inputs(self, case):
        g = torch.Generator().manual_seed(case.resolution)
        coarse = torch.randn(case.batch * 3, 32 * 3, self.grid // 8, self.grid // 8, generator=g) * 2
        planes = F.interpolate(coarse, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        planes = planes.reshape(case.batch, 3, 32, 3, self.grid, self.grid).to(self.device)
        cam2world = orbit_cam2world(math.pi / 2, math.pi / 2, yaw_std=0.3, pitch_std=0.15, batch=case.batch,
                                    generator=g)
        params = torch.randn(case.batch, self.layout.size, generator=g) * 0.5
        labels = torch.cat([camera_labels(cam2world, ffhq_intrinsics()), params], -1).to(self.device)
        return planes.requires_grad_(True), labels

    def renderer(self, case, setup, **settings):
        config = RenderConfig(depth_resolution=case.coarse, depth_resolution_importance=case.fine,
                              sampling=setup.sampling, proposal_samples=case.proposal, **settings)
        return Renderer(self.warps[setup.warp], config).to(self.device)

    def runner(self, case, setup, pass_name):
        """A function doing one render (and its backward) of the case."""
        renderer = self.renderer(case, setup)
        planes, labels = self.inputs(case)

        def run():
            generator = torch.Generator(self.device).manual_seed(1)
            if pass_name == "forward":
                with torch.no_grad():
                    return renderer(planes, self.decoder, labels, case.resolution, backend=setup.backend,
                                    generator=generator).features
            out = renderer(planes, self.decoder, labels, case.resolution, backend=setup.backend,
                           generator=generator)
            (out.features.square().mean() + out.delta.square().mean()).backward()
            planes.grad = None
            return out.features.detach()
        return run

    def measure(self, case, setup, pass_name, runs):
        """``{ms, peak_bytes, warp_ms, warp_share}``: the median of ``runs`` calls, the peak of
        the first."""
        run = self.runner(case, setup, pass_name)
        timed = self.warps[setup.warp]
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

    @torch.no_grad()
    def quality(self, case, setup):
        """The proposal render (its training draws) against the dense ``QUALITY_DENSE`` render of
        the same rays with evenly spaced depths: ``{psnr_db, depth_mae_mm, silhouette_iou}``."""
        planes, labels = self.inputs(case)
        coarse, fine = QUALITY_DENSE
        dense_case = RenderCase(case.resolution, coarse, fine, case.batch)
        dense = self.renderer(dense_case, Setup(setup.backend, "dense", setup.warp), det_sampling=True)(
            planes, self.decoder, labels, case.resolution, backend=setup.backend)
        out = self.renderer(case, setup)(planes, self.decoder, labels, case.resolution, backend=setup.backend,
                                         generator=torch.Generator(self.device).manual_seed(1))
        return image_agreement(out, dense, self.warps[setup.warp].inner.world_scale)


def image_agreement(out, ref, world_scale):
    """How closely render ``out`` matches ``ref`` (:class:`omnifast.render.RenderOutput`):
    PSNR of the RGB features (images in [0, 1]), the mean absolute depth error in mm where both
    silhouettes (opacity > 0.5) hold the pixel, and the silhouettes' IoU."""
    mse = (out.features[:, :3] - ref.features[:, :3]).double().square().mean().item()
    mine, theirs = out.opacity > 0.5, ref.opacity > 0.5
    both = mine & theirs
    depth = (out.depth - ref.depth).abs()[both].double().mean().item() / world_scale * 1000 if both.any() else None
    union = (mine | theirs).sum().item()
    return {"psnr_db": 10 * math.log10(1 / max(mse, 1e-20)), "depth_mae_mm": depth,
            "silhouette_iou": both.sum().item() / union if union else 1.0}


def max_resolution(rows, budget_bytes):
    """The largest square resolution that fits ``budget_bytes`` for one contender: a line
    through the forward+backward peaks of the smallest and largest resolutions sampled like the
    first case (EG3D's 48 + 48), bytes = fixed + per_pixel * pixels, solved for the pixels.
    ``(resolution, per_pixel, fixed)``; None where unmeasured."""
    trained = [r for r in rows if r["pass"] == "forward+backward" and r["peak_bytes"]]
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
    """Every case, contender and pass; returns ``(rows, max_resolution per contender, budget)``."""
    from .measure import return_large_blocks

    device = torch.device(device)
    return_large_blocks()
    bench = RenderBench(device)
    runs = runs or (3 if device.type == "cuda" else 1)
    if memory_budget is None:
        memory_budget = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
                         else 16 * 2 ** 30)
    warm = RenderCase(16, 8, 8, 1, proposal=6)
    for setup in SETUPS:
        bench.runner(warm, setup, "forward+backward")()
    print(f"\nrender: one training render, W '{bench.network}', tri-grid 3 x 32 x 3 x {bench.grid}^2; "
          f"peak = extra MiB during the pass; x = the row's time (peak) over omnifast dense's; proposal "
          f"quality against the dense {QUALITY_DENSE[0]} + {QUALITY_DENSE[1]} render of the same rays", flush=True)
    print(f"{'case':<22} {'pass':<17} {'contender':<28} {'ms':>9} {'x time':>7} {'peak MiB':>9} {'x peak':>7} "
          f"{'warp':>5}  quality")
    rows = []
    for case in render_cases(device, quick)[:cases]:
        quality = {s: bench.quality(case, s) for s in case.setups if s.sampling == "proposal"}
        for pass_name in [p for p in RENDER_PASSES if passes is None or p in passes]:
            got = {s: bench.measure(case, s, pass_name, runs) for s in case.setups}
            base = got.get(OMNIFAST)
            for setup, m in got.items():
                row = {"op": "render", "backend": setup.backend, "sampling": setup.sampling, "warp": setup.warp,
                       "contender": setup.name, "resolution": case.resolution, "pass": pass_name,
                       "batch": case.batch, "sdf_network": bench.network if setup.warp == "sdf" else None,
                       "note": case.note, **m}
                if setup.sampling == "proposal":
                    row.update(samples_per_ray=case.proposal, probe={
                        "resolution": -(-case.resolution // RenderConfig.probe_stride),
                        "samples_per_ray": [case.coarse, case.fine]},
                        quality_against=f"dense {QUALITY_DENSE[0]} + {QUALITY_DENSE[1]}, evenly spaced",
                        **quality[setup])
                else:
                    row["samples_per_ray"] = [case.coarse, case.fine]
                if base is not None:
                    row["ms_over_omnifast_dense"] = m["ms"] / base["ms"]
                    if base["peak_bytes"] and m["peak_bytes"]:
                        row["peak_over_omnifast_dense"] = m["peak_bytes"] / base["peak_bytes"]
                rows.append(row)
                print(_format_row(case, row), flush=True)
    limits = {}
    for setup in SETUPS:
        if setup.warp != "sdf":
            continue
        mine = [r for r in rows if r["contender"] == setup.name]
        resolution, per_pixel, fixed = max_resolution(mine, memory_budget)
        limits[setup.name] = resolution
        for row in mine:
            row.update(max_resolution=resolution, bytes_per_pixel=per_pixel, fixed_bytes=fixed,
                       memory_budget_bytes=memory_budget)
        if resolution is not None:
            print(f"largest {rows[0]['batch']}-image training render in {memory_budget / 2 ** 30:.1f} GiB, "
                  f"{setup.name}: {resolution}^2 ({per_pixel / 1024:.1f} KiB per pixel)", flush=True)
    return rows, limits, memory_budget


def _format_row(case, row):
    ratio = lambda key: f"{row[key]:.2f}" if key in row else "n/a"  # noqa: E731
    quality = (f"{row['psnr_db']:.1f} dB, depth {row['depth_mae_mm']:.2f} mm, IoU {row['silhouette_iou']:.4f}"
               if "psnr_db" in row and row["depth_mae_mm"] is not None else "")
    return (f"{case.name:<22} {row['pass']:<17} {row['contender']:<28} {row['ms']:>9.0f} "
            f"{ratio('ms_over_omnifast_dense'):>7} {_mib(row['peak_bytes']):>9} {ratio('peak_over_omnifast_dense'):>7} "
            f"{row['warp_share']:>5.0%}  {quality}")


def _mib(value):
    return "n/a" if value is None else f"{value / 2 ** 20:.0f}"
