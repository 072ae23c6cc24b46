"""Training the semantic SDF: configuration, the loop (progress bar, periodic evaluation, CSV
logs), atomic checkpoints and resuming."""
import csv
import dataclasses
import json
import math
import os
import time

import torch

from .._atomic import atomic_write
from .data import ParamDistribution, SDFSampler
from .evaluate import evaluate, held_out_params
from .losses import LossWeights, semantic_sdf_losses
from .network import NetworkConfig, SemanticSDF

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
TRAIN_LOG = "train_log.csv"
EVAL_LOG = "eval_log.csv"


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the run folder."""
    flame_dir: str
    n_shape: int = 100
    n_expr: int = 50
    steps: int = 2000
    batch: int = 4                 # meshes (parameter vectors) per step
    surface_points: int = 1024     # per mesh
    space_points: int = 2048       # per mesh
    lr: float = 2e-3               # peak of a one-cycle schedule (warm-up, then cosine decay)
    warmup: float = 0.05           # fraction of the steps spent warming up
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    weights: LossWeights = dataclasses.field(default_factory=LossWeights)
    distribution: ParamDistribution = dataclasses.field(default_factory=ParamDistribution)
    seed: int = 0
    device: str = "cpu"
    eval_every: int = 500
    checkpoint_every: int = 250
    eval_meshes: int = 4
    eval_points: int = 2048        # per mesh

    def to_dict(self):
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data):
        data = dict(data)
        nested = {"network": NetworkConfig, "weights": LossWeights, "distribution": ParamDistribution}
        for key, cls in nested.items():
            if key in data:
                data[key] = cls(**data[key])
        return TrainConfig(**data)


class Run:
    """The pieces of a run: FLAME, the sampler, the network, the optimiser and its schedule."""

    def __init__(self, config):
        from ..flame import Flame

        self.config = config
        device = torch.device(config.device)
        self.flame = Flame(config.flame_dir, config.n_shape, config.n_expr).to(device)
        self.sampler = SDFSampler(self.flame, config.distribution, config.surface_points, config.space_points)
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
            torch.manual_seed(config.seed)
            self.model = SemanticSDF(self.flame.layout.size, self.sampler.box_min, self.sampler.box_max,
                                     config.distribution.scale(self.flame.layout), config.network).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        warmup = max(1, int(config.steps * config.warmup))

        def schedule(step):  # linear warm-up, cosine decay to 1% of the peak
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, config.steps - warmup))
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.generator = torch.Generator(device).manual_seed(config.seed)
        self.step = 0

    def state(self):
        return {"config": self.config.to_dict(), "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(), "generator_device": self.generator.device.type}

    def load_state(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("generator_device", "cpu") == self.generator.device.type:
            self.generator.set_state(state["generator"])  # else: a fresh stream, seeded as before
        self.step = state["step"]

    def train_step(self):
        batch = self.sampler.sample(self.config.batch, self.generator)
        loss, terms = semantic_sdf_losses(self.model, batch, self.config.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        terms["total"] = float(loss.detach())
        return terms


def load_run(run_dir, device=None):
    """A :class:`Run` restored from ``run_dir/checkpoint.pt`` (on ``device`` if given)."""
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected {path})")
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(state["config"])
    if device is not None:
        config.device = str(device)
    run = Run(config)
    run.load_state(state)
    return run


def _truncate_log(path, last_step):
    """Drop log rows written after the checkpoint a resumed run restarts from."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= last_step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


class _CsvLog:
    def __init__(self, path):
        self.path, self.fields = path, None

    def write(self, row):
        new = not os.path.isfile(self.path) or os.path.getsize(self.path) == 0
        if self.fields is None:
            if new:
                self.fields = list(row)
            else:
                with open(self.path) as f:
                    self.fields = next(csv.reader(f))
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def train(config, run_dir, *, resume=False, steps=None, progress=True, log=print, stop_after=None):
    """Train (or, with ``resume``, continue) a run in ``run_dir``.

    Writes ``config.json``, ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
    ``train_log.csv`` (every step) and ``eval_log.csv`` (every ``eval_every`` steps and at the
    end). With ``resume``, ``config`` may be None (the run's own is used) and ``steps`` extends or
    shortens the run. ``stop_after`` ends this call (with a checkpoint) at that step, to be resumed later;
    a resumed run continues exactly as if it had not stopped. Returns the last evaluation's
    metrics.
    """
    os.makedirs(run_dir, exist_ok=True)
    if resume:
        run = load_run(run_dir, None if config is None else config.device)
        config = run.config
        config.steps = steps or config.steps
        for name in (TRAIN_LOG, EVAL_LOG):
            _truncate_log(os.path.join(run_dir, name), run.step)
        log(f"resuming {run_dir} at step {run.step} of {config.steps}")
    else:
        if os.path.isfile(os.path.join(run_dir, CHECKPOINT)):
            raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) to "
                                  "continue it or choose another folder")
        for name in (TRAIN_LOG, EVAL_LOG):
            if os.path.isfile(os.path.join(run_dir, name)):
                os.remove(os.path.join(run_dir, name))
        run = Run(config)
    text = json.dumps(config.to_dict(), indent=2)
    atomic_write(os.path.join(run_dir, CONFIG), lambda f: f.write(text), binary=False)
    train_log, eval_log = _CsvLog(os.path.join(run_dir, TRAIN_LOG)), _CsvLog(os.path.join(run_dir, EVAL_LOG))
    held_out = held_out_params(run, config.eval_meshes)
    bar = _progress(config.steps, run.step, progress)
    start, metrics, running = time.perf_counter(), None, {}
    until = config.steps if stop_after is None else min(stop_after, config.steps)
    while run.step < until:
        terms = run.train_step()
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in terms.items()}
        train_log.write({"step": run.step, "seconds": round(time.perf_counter() - start, 3),
                         "lr": run.scheduler.get_last_lr()[0], **terms})
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{running[k]:.4f}" for k in ("total", "sdf", "semantic", "eikonal")}, refresh=False)
        last = run.step == config.steps
        if run.step % config.eval_every == 0 or last:
            metrics = evaluate(run, held_out, config.eval_points)
            eval_log.write({"step": run.step, **metrics})
            message = (f"step {run.step}: near-surface |s - s*| {metrics['near_mean_pct']:.3f}% of the "
                       f"diagonal, correspondence {metrics['correspondence_mean_pct']:.3f}%")
            (bar.write if bar is not None else log)(message)
        if run.step % config.checkpoint_every == 0 or run.step == until:
            state = run.state()
            atomic_write(os.path.join(run_dir, CHECKPOINT), lambda f: torch.save(state, f))
    if bar is not None:
        bar.close()
    if metrics is None:  # nothing left to train: evaluate what is there
        metrics = evaluate(run, held_out, config.eval_points)
    return metrics


def _progress(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train-sdf", unit="step", dynamic_ncols=True,
                mininterval=1.0)


def seconds_per_step(config, probe_steps=6):
    """Measured time of one training step for ``config`` (after one warm-up step), so that a
    time budget can be turned into a fixed, reproducible number of steps."""
    probe = Run(dataclasses.replace(config, steps=probe_steps + 1))
    probe.train_step()
    start = time.perf_counter()
    for _ in range(probe_steps):
        probe.train_step()
    return (time.perf_counter() - start) / probe_steps
