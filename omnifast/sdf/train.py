"""Training the semantic SDF: configuration, the loop (progress bar, periodic evaluation, CSV
logs), atomic checkpoints and resuming, in a run folder (:mod:`omnifast.runs`)."""
import dataclasses
import math
import os
import time

import torch

from ..runs import RunError, RunFolder, check_new_run_folder, check_steps_left
from .data import ParamDistribution, SDFSampler
from .evaluate import evaluate, held_out_params
from .losses import LossWeights, semantic_sdf_losses
from .network import NetworkConfig, SemanticSDF

TRAIN_LOG = "train_log.csv"
EVAL_LOG = "eval_log.csv"
CHECKPOINT_KEYS = ("config", "step", "model", "optimizer", "scheduler", "generator")
# Settings a resumed run keeps (a change would silently train a different run).
RUN_DEFINING = ("flame_dir", "n_shape", "n_expr", "batch", "surface_points", "space_points", "lr", "warmup",
                "network", "weights", "distribution", "seed", "eval_meshes", "eval_points")


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

    def __post_init__(self):
        for name in ("steps", "batch", "surface_points", "space_points", "eval_every", "checkpoint_every",
                     "eval_meshes", "eval_points", "n_shape"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.n_expr, bool) or not isinstance(self.n_expr, int) or self.n_expr < 0:
            raise ValueError(f"n_expr must be a non-negative integer, got {self.n_expr!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.warmup, (int, float)) and 0 <= self.warmup < 1):
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup!r}")

    def to_dict(self):
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data, source="settings"):
        """A config from a dict (a run's config.json, a --config file); ``source`` names it in
        errors."""
        data = dict(data)
        nested = {"network": NetworkConfig, "weights": LossWeights, "distribution": ParamDistribution}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunError(f"{source}: unknown setting {unknown[0]!r} (settings are {', '.join(sorted(known))})")
        try:
            for key, cls in nested.items():
                if key in data:
                    fields = {f.name for f in dataclasses.fields(cls)}
                    if not isinstance(data[key], dict) or set(data[key]) - fields:
                        raise ValueError(f"{key} must be an object with keys among {', '.join(sorted(fields))}, "
                                         f"got {data[key]!r}")
                    data[key] = cls(**data[key])
            return TrainConfig(**data)
        except (TypeError, ValueError) as error:
            raise RunError(f"{source}: {error}") from None


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
    folder = RunFolder(run_dir)
    state = folder.load_checkpoint(CHECKPOINT_KEYS)
    config = TrainConfig.from_dict(state["config"], source=folder.file("checkpoint.pt"))
    if device is not None:
        config.device = str(device)
    run = Run(config)
    try:
        run.load_state(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise RunError(f"{folder.file('checkpoint.pt')}: does not fit its own settings ({error})") from None
    return run


def changed_settings(run_config, asked):
    """The run-defining settings of ``asked`` (a TrainConfig) that differ from the run's."""
    ours, theirs = run_config.to_dict(), asked.to_dict()
    return {key: (ours[key], theirs[key]) for key in RUN_DEFINING if ours[key] != theirs[key]}


def train(config, run_dir, *, resume=False, steps=None, progress=True, log=print, stop_after=None):
    """Train (or, with ``resume``, continue) a run in ``run_dir``.

    Writes ``config.json``, ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
    ``train_log.csv`` (every step) and ``eval_log.csv`` (every ``eval_every`` steps and at the
    end). With ``resume``, ``config`` may be None (the run's own is used) and ``steps`` extends or
    shortens the run; a given ``config`` must agree with the run on every setting that defines
    it (RUN_DEFINING), else the run is refused rather than silently continued as it was.
    ``stop_after`` ends this call (with a checkpoint) at that step, to be resumed later; a resumed
    run continues exactly as if it had not stopped. Returns the last evaluation's metrics.
    """
    if not resume:
        check_new_run_folder(run_dir, "stage I", TrainConfig.from_dict)
    folder = RunFolder(run_dir, create=True)
    train_log, eval_log = folder.log(TRAIN_LOG), folder.log(EVAL_LOG)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if config is not None:  # resolved now: the run works from any working directory
        config = dataclasses.replace(config, flame_dir=os.path.abspath(config.flame_dir))
    if resume:
        run = load_run(run_dir, None if config is None else config.device)
        if config is not None:
            changed = changed_settings(run.config, config)
            if changed:
                key, (kept, asked) = next(iter(changed.items()))
                raise RunError(f"{folder.file('config.json')}: the run has {key}={kept!r}; resuming keeps a "
                               f"run's settings, got {key}={asked!r} (start a new run to change it)")
        config = run.config
        config.steps = steps or config.steps
        check_steps_left(run_dir, run.step, config.steps)
        for log_file in (train_log, eval_log):
            log_file.truncate(run.step)
        log(f"resuming {run_dir} at step {run.step} of {config.steps}")
    else:
        for log_file in (train_log, eval_log):
            log_file.remove()
        run = Run(config)
    folder.write_config(config.to_dict())
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
            folder.save_checkpoint(run.state())
    if bar is not None:
        bar.close()
    if not folder.has_checkpoint():  # nothing was trained (the run was already at its end)
        folder.save_checkpoint(run.state())
    if metrics is None:  # nothing left to train: evaluate what is there
        metrics = evaluate(run, held_out, config.eval_points)
    return metrics


def _progress(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train-sdf", unit="step", dynamic_ncols=True,
                mininterval=1.0)
