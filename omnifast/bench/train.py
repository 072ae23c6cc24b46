"""The training benchmark: one full GAN iteration of stage II (G main, D main, and the lazy
regularisers amortised: density every 4 iterations, R1 every 16) at neural rendering resolutions
64^2, 128^2 and 256^2 with EG3D's full-size networks (512^2 images), for each renderer backend in
the same run: seconds per iteration, images per second, projected kimg per day, peak memory, each
phase's time, and each part's share (the profiler attributes every forward op and its backward to
the module that ran it). Peak memory is the run's tensors (parameters, gradients, optimiser
states, G_ema) plus the most the iteration adds, phase by phase.

The contenders: omnifast's kernels, EG3D's plain PyTorch path (``reference``) and that path
wrapped in ``torch.utils.checkpoint`` over chunks of rays (``reference+checkpoint``), with EG3D's
coarse + fine samples, and omnifast's proposal sampler (24 samples per ray). The contenders take
turns, iteration by iteration (a slower spell of a shared machine falls on all). The backbone,
super-resolution and discriminator are the same code for all; the renderer differs, and omnifast's
rows run training as omnifast does by default, with the super-resolution's last block and, in R1,
D's first block recomputed in the backward (``recompute_full_resolution``), where EG3D's path keeps
their activations. The
SR-free cases train a generator without super-resolution whose image is the render at the
image's resolution (the ``sr-free`` presets). The images are random and W is untrained: an
iteration's cost does not depend on either."""
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from ..gan.train import TINY_GENERATOR, GANConfig, GANRun
from ..geometry import camera_labels, ffhq_intrinsics, orbit_cam2world
from .measure import PeakMeter, _sync
from .render import OMNIFAST, PROPOSAL, Setup, untrained_warps

SETUPS = (OMNIFAST, Setup("reference"), Setup("reference+checkpoint"), PROPOSAL)
PARTS = ("backbone", "warp", "renderer", "superresolution", "discriminator", "other")


@dataclass
class TrainCase:
    nrr: int
    batch: int
    coarse: int
    fine: int
    note: str = ""
    sr_free: bool = False     # no super-resolution: the images are nrr^2
    setups: tuple = SETUPS
    proposal: int = 24        # samples per ray of the proposal rows

    @property
    def name(self):
        return f"{self.nrr}px {self.coarse}+{self.fine} x{self.batch}{' SR-free' if self.sr_free else ''}"


def train_cases(device, quick=False):
    """EG3D's 48 + 48 samples at 64^2 and 128^2 (batch 1 on the CPU, 4 on a GPU) and 256^2 (on
    the CPU with 16 + 16 samples, which keeps the reference's iteration within minutes); then
    SR-free iterations, omnifast dense and proposal (64^2 and 128^2 on the CPU, 256^2 and 512^2
    on a GPU), whose peaks give the bytes per pixel of SR-free training."""
    sr_free = dict(sr_free=True, setups=(OMNIFAST, PROPOSAL))
    if quick:
        check = dict(note="harness check", proposal=6)
        return [TrainCase(16, 2, 6, 6, **check), *(TrainCase(r, 2, 6, 6, **check, **sr_free) for r in (16, 32))]
    if torch.device(device).type == "cuda":
        return [*(TrainCase(r, 4, 48, 48) for r in (64, 128, 256)),
                *(TrainCase(r, 4, 48, 48, **sr_free) for r in (256, 512))]
    return [TrainCase(64, 1, 48, 48), TrainCase(128, 1, 48, 48),
            TrainCase(256, 1, 16, 16, "CPU: 16 + 16 samples per ray at 256^2"),
            *(TrainCase(r, 1, 48, 48, **sr_free) for r in (64, 128))]


class RandomImages(torch.utils.data.Dataset):
    """Random images with labels as a dataset has them (EG3D's FFHQ cameras, FLAME parameters)."""

    def __init__(self, count, resolution, layout, seed=0):
        g = torch.Generator().manual_seed(seed)
        cam2world = orbit_cam2world(math.pi / 2, math.pi / 2, yaw_std=0.3, pitch_std=0.15, batch=count, generator=g)
        params = torch.randn(count, layout.size, generator=g) * 0.5
        self.labels = torch.cat([camera_labels(cam2world, ffhq_intrinsics()), params], -1)
        self.images = torch.randint(0, 256, (count, 3, resolution, resolution), dtype=torch.uint8, generator=g)
        self.resolution, self.meta = resolution, {}

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


class PhaseClock:
    """Seconds and peak memory (over the iteration's start) per phase of an iteration:
    :class:`GANRun` calls it with each phase's name as the phase starts and None at the end."""

    def __init__(self, device):
        self.device, self.meter = device, PeakMeter(device)
        self.seconds, self.peaks, self._phase, self._start = {}, {}, None, 0.0

    def __call__(self, name):
        _sync(self.device)
        if self._phase is None:
            self.seconds, self.peaks = {}, {}
            self.meter.start()
        else:
            self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + time.perf_counter() - self._start
            peak = self.meter.peak()
            self.peaks[self._phase] = None if peak is None else max(peak, self.peaks.get(self._phase, 0))
            self.meter.restart()
        self._phase, self._start = name, time.perf_counter()

    @property
    def peak(self):
        return None if None in self.peaks.values() else max(self.peaks.values(), default=0)


def static_bytes(run):
    """What a run holds between iterations: parameters and buffers of G, D and G_ema, gradients
    and the optimisers' states (the same for both backends)."""
    tensors = [*run.G.parameters(), *run.G.buffers(), *run.D.parameters(), *run.D.buffers(),
               *run.G_ema.parameters(), *run.G_ema.buffers()]
    tensors += [p.grad for p in (*run.G.parameters(), *run.D.parameters()) if p.grad is not None]
    for optimizer in (run.opt_G, run.opt_D):
        tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}  # G_ema shares the frozen warp
    return sum(unique.values())


def part_seconds(step, run, device):
    """``{part: seconds}`` of one ``step()``: the profiler's time of every forward op inside a
    part's modules and of every backward node those ops made (a recomputation in the backward
    counts for the node that ran it), the rest as ``other``."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    modules = [("backbone", run.G.backbone.mapping), ("backbone", run.G.backbone.synthesis),
               ("renderer", run.G.renderer), ("warp", run.G.renderer.warp),
               *((("superresolution", run.G.superresolution),) if run.G.superresolution is not None else ()),
               ("discriminator", run.D)]
    scopes, hooks = [], []
    for part, module in modules:
        def enter(_module, _args, part=part):
            scopes.append(record_function("part:" + part))
            scopes[-1].__enter__()

        def leave(_module, _args, _out):
            scopes.pop().__exit__(None, None, None)
        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            step()
            _sync(device)
    finally:
        for hook in hooks:
            hook.remove()
    cuda = device.type == "cuda"
    seconds_of = lambda e: (e.device_time_total if cuda else e.cpu_time_total) / 1e6  # noqa: E731
    seconds, owner = defaultdict(float), {}

    def forward(event, part):
        if event.name.startswith("part:"):
            if part is not None:  # a nested part's time is its own, not its parent's
                seconds[part] -= seconds_of(event)
            part = event.name[5:]
            seconds[part] += seconds_of(event)
        elif part is not None and event.sequence_nr >= 0:
            owner[event.sequence_nr] = part
        for child in event.cpu_children:
            forward(child, part)

    roots = [e for e in prof.events() if e.cpu_parent is None]
    for event in roots:
        if not event.name.startswith("autograd::engine::evaluate_function"):
            forward(event, None)
    for event in roots:  # backward nodes; those nested in another node belong to it
        if event.name.startswith("autograd::engine::evaluate_function"):
            seconds[owner.get(event.sequence_nr, "other")] += seconds_of(event)
    total = sum(seconds_of(e) for e in roots)
    seconds["other"] += total - sum(seconds.values())
    return {part: max(0.0, seconds[part]) for part in PARTS}


class TrainBench:
    """EG3D's full-size generator and discriminator at 512^2 (a tiny configuration at 64^2 with
    ``quick``), the untrained semantic SDF of the given size as W (``small`` on the CPU, ``full``
    on a GPU) and random images."""

    def __init__(self, device, quick=False, network=None):
        self.device, self.quick = torch.device(device), quick
        self.network = network or ("full" if self.device.type == "cuda" else "small")
        self.warp = untrained_warps(self.device, self.network)["sdf"]
        self.image_resolution = 64 if quick else 512
        self.datasets = {}

    def dataset(self, case):
        resolution = case.nrr if case.sr_free else self.image_resolution
        if resolution not in self.datasets:
            self.datasets[resolution] = RandomImages(16, resolution, self.warp.flame.layout)
        return self.datasets[resolution]

    def config(self, case, setup):
        sizes = dict(generator=TINY_GENERATOR, d_channel_base=1024, d_channel_max=64) if self.quick else {}
        if case.sr_free:
            sizes["generator"] = {**sizes.get("generator", {}), "superresolution": False}
        return GANConfig(dataset="random images", sdf_run=f"untrained W ({self.network})", preset="benchmark",
                         render=dict(depth_resolution=case.coarse, depth_resolution_importance=case.fine,
                                     sampling=setup.sampling, proposal_samples=case.proposal),
                         batch=case.batch, nrr_initial=case.nrr, backend=setup.backend, device=str(self.device),
                         mbstd_group=min(4, case.batch), recompute_full_resolution=setup.backend == "omnifast",
                         **sizes)

    def make_run(self, case, setup):
        """A run as after its first iteration: the optimisers' states and the gradients exist
        (Adam's first step on zero gradients moves nothing)."""
        run = GANRun(self.config(case, setup), warp=self.warp, dataset=self.dataset(case))
        for optimizer, module in ((run.opt_G, run.G), (run.opt_D, run.D)):
            for p in module.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
            optimizer.step()
        return run

    def warm_up(self, case):
        """One iteration of every contender with 4 + 4 samples per ray: the networks' one-time
        costs (first allocations, kernel selection per shape) fall on no measured iteration."""
        for setup in case.setups:
            run = self.make_run(TrainCase(case.nrr, case.batch, 4, 4, sr_free=case.sr_free, proposal=4), setup)
            run.step = 0
            run.train_step()

    def measure(self, case, setups, runs=1, warmup=0, shares=True):
        """Contenders on one case: for each, a plain iteration (step 1) and one with every lazy
        regulariser (step 0), each timed by phase; the amortised iteration; peak memory (the
        larger of the two iterations', plus what the run holds between iterations); and with
        ``shares``, each part's seconds in a profiled plain iteration. The contenders take turns,
        iteration by iteration, so that a slower spell of a shared machine falls on all of them,
        and each keeps the iteration of median time. ``{setup: row}``."""
        made = {setup: self.make_run(case, setup) for setup in setups}
        timed = {setup: {"plain": [], "regularised": []} for setup in setups}
        for run in made.values():
            run.clock = PhaseClock(self.device)
        for label, step in (("plain", 1), ("regularised", 0)):
            for i in range(warmup + runs):
                for setup, run in made.items():
                    run.step = step
                    run.train_step()
                    if i >= warmup:
                        timed[setup][label].append({"seconds": sum(run.clock.seconds.values()),
                                                    "phases": dict(run.clock.seconds), "peaks": dict(run.clock.peaks)})
        rows = {}
        for setup, run in made.items():
            run.clock = None
            measured = {label: sorted(got, key=lambda t: t["seconds"])[len(got) // 2]
                        for label, got in timed[setup].items()}
            rows[setup] = self._row(case, setup, run, measured)
            rows[setup]["iterations_seconds"] = {label: [t["seconds"] for t in got]
                                                 for label, got in timed[setup].items()}
            if shares:
                run.step = 1
                rows[setup]["part_seconds"] = part_seconds(run.train_step, run, self.device)
        return rows

    def _row(self, case, setup, run, measured):
        c, plain, full = run.config, measured["plain"], measured["regularised"]
        g_reg = max(0.0, full["phases"]["G_main"] - plain["phases"]["G_main"])
        d_reg = full["phases"].get("D_reg", 0.0)
        seconds = plain["seconds"] + g_reg / c.density_reg_interval + d_reg / c.r1_interval
        fixed = static_bytes(run)
        phase_peaks = {**plain["peaks"], "G_main+G_reg": full["peaks"]["G_main"], "D_reg": full["peaks"].get("D_reg")}
        peak = None if None in phase_peaks.values() else max(phase_peaks.values())
        return {"op": "train", "backend": setup.backend, "sampling": setup.sampling, "contender": setup.name,
                "sr_free": case.sr_free, "resolution": case.nrr, "batch": case.batch,
                "image_resolution": run.G.image_resolution,
                "samples_per_ray": case.proposal if setup.sampling == "proposal" else [case.coarse, case.fine],
                "sdf_network": self.network, "note": case.note, "pass": "forward+backward", "warp": "sdf",
                "recompute_full_resolution": c.recompute_full_resolution,
                "seconds_per_iteration": seconds, "images_per_second": case.batch / seconds,
                "kimg_per_day": case.batch / seconds * 86400 / 1000,
                "plain_iteration_seconds": plain["seconds"], "regularised_iteration_seconds": full["seconds"],
                "phases": {**plain["phases"], "G_reg": g_reg, "D_reg": d_reg},
                "extra_peak_bytes": peak, "phase_peak_bytes": phase_peaks, "static_bytes": fixed,
                "peak_bytes": None if peak is None else peak + fixed}


def run_train_bench(device, quick=False, cases=None, runs=None, shares=True, sr_free_only=False):
    """Every case (``sr_free_only``: the SR-free ones) and contender: the rows (and, from the
    SR-free rows, the largest SR-free resolution a memory budget fits)."""
    from .measure import return_large_blocks

    device = torch.device(device)
    return_large_blocks()
    bench = TrainBench(device, quick)
    cuda = device.type == "cuda"
    runs, warmup = runs or (3 if cuda else 1), 1 if cuda else 0
    print(f"\ntrain: one GAN iteration, {'tiny' if quick else 'full-size'} networks, images "
          f"{bench.image_resolution}^2 (SR-free: the render's), W '{bench.network}'; seconds amortise density (1/4) "
          f"and R1 (1/16); peak = run's tensors + extra during the iteration; x = the row's time (peak) over "
          f"omnifast dense's", flush=True)
    print(f"{'case':<26} {'contender':<22} {'s/iter':>8} {'img/s':>7} {'kimg/day':>9} {'x time':>7} "
          f"{'peak MiB':>9} {'x peak':>7}  parts (share of a plain iteration)")
    rows = []
    for case in [c for c in train_cases(device, quick) if c.sr_free or not sr_free_only][:cases]:
        bench.warm_up(case)
        got = bench.measure(case, case.setups, runs, warmup, shares)
        base, ref = got[OMNIFAST], got.get(Setup("reference"))
        for setup, row in got.items():
            row["seconds_over_omnifast_dense"] = row["seconds_per_iteration"] / base["seconds_per_iteration"]
            if row["peak_bytes"] and base["peak_bytes"]:
                row["peak_over_omnifast_dense"] = row["peak_bytes"] / base["peak_bytes"]
            if ref is not None:  # the reference's time and peak over the row's, as before
                row["speedup"] = ref["seconds_per_iteration"] / row["seconds_per_iteration"]
                if row["peak_bytes"] and ref["peak_bytes"]:
                    row["memory_ratio"] = row["peak_bytes"] / ref["peak_bytes"]
            rows.append(row)
            parts = row.get("part_seconds")
            shares_text = "" if not parts else " ".join(
                f"{p} {s / max(sum(parts.values()), 1e-12):.0%}" for p, s in parts.items())
            memory = row.get("peak_over_omnifast_dense")
            print(f"{case.name:<26} {setup.name:<22} {row['seconds_per_iteration']:>8.2f} "
                  f"{row['images_per_second']:>7.3f} {row['kimg_per_day']:>9.2f} "
                  f"{row['seconds_over_omnifast_dense']:>7.2f} {_mib(row['peak_bytes']):>9} "
                  f"{'n/a' if memory is None else f'{memory:.2f}':>7}  {shares_text}", flush=True)
    for setup in (OMNIFAST, PROPOSAL):
        fit = sr_free_projection([r for r in rows if r["sr_free"] and r["contender"] == setup.name])
        if fit:
            print(f"SR-free training, {setup.name}: {fit['bytes_per_pixel'] / 1024:.1f} KiB per pixel + "
                  f"{fit['fixed_bytes'] / 2 ** 30:.2f} GiB; at batch 4 an 80 GB GPU fits "
                  f"{fit['resolution_80GB_batch4']}^2 (projection from these peaks)", flush=True)
            for row in rows:
                if row["sr_free"] and row["contender"] == setup.name:
                    row["sr_free_projection"] = fit
    return rows


def sr_free_projection(rows, budget_bytes=80e9, batch=4):
    """A line through the peaks of the smallest and largest SR-free rows (bytes = fixed +
    per_pixel * pixels, pixels counted over the batch), solved for the largest square
    resolution of ``batch`` images in ``budget_bytes``; None with fewer than two resolutions."""
    points = sorted((r["resolution"] ** 2 * r["batch"], r["peak_bytes"]) for r in rows if r["peak_bytes"])
    if len({p for p, _ in points}) < 2:
        return None
    (p0, b0), (p1, b1) = points[0], points[-1]
    per_pixel = max((b1 - b0) / (p1 - p0), 1.0)
    fixed = max(0.0, b1 - per_pixel * p1)
    pixels = (budget_bytes - fixed) / per_pixel / batch
    return {"bytes_per_pixel": per_pixel, "fixed_bytes": fixed, "budget_bytes": budget_bytes, "batch": batch,
            "resolution_80GB_batch4": int(math.isqrt(int(pixels))) if pixels > 0 else 0}


def _mib(value):
    return "n/a" if value is None else f"{value / 2 ** 20:.0f}"
