"""GAN training of stage II: configuration and presets, the phases (G main, G density
regularisation, D main, D R1) with lazy regularisation, generator EMA, a run folder (CSV and
TensorBoard logs, image grids, atomic checkpoints, exact resume), and multi-process training
through torchrun (EG3D's gradient exchange: one all-reduce per optimiser step)."""
import copy
import dataclasses
import math
import os
import time

import torch
import torch.distributed as dist

from ..geometry.cameras import LABEL_SIZE
from ..render import BACKENDS, RenderConfig
from ..runs import RunError, RunFolder, atomic_write, check_new_run_folder, check_steps_left
from . import loss as L
from .models import DualDiscriminator, Generator, GeneratorConfig
from .networks import fused_activations

TRAIN_LOG = "train_log.csv"
TRAIN_COLUMNS = ("step", "seconds", "G", "D", "geometry_prior", "control", "D_control", "density_reg", "eikonal", "r1",
                 "fd_random", "nrr", "blur", "beta")
CHECKPOINT_KEYS = ("config", "step", "G", "D", "G_ema", "opt_G", "opt_D")
# The tri-grid at 128^2: at 32^2 an eye of the demo's heads is about one cell, and no fit shows it,
# not even one image fitted directly (benchmarks/grid_capacity.py); at 128^2 one does, for about
# 15% more time an iteration (the backbone's last layers have 16 and 32 channels).
TINY_GENERATOR = dict(z_dim=64, w_dim=64, grid_resolution=128, grid_channels=8, channel_base=2048, channel_max=64,
                      feature_channels=16, sr_channels=[32, 16])
SR_FREE_RENDER = dict(sampling="proposal", proposal_samples=24, depth_resolution=48, depth_resolution_importance=48)
# The tiny presets' training, for runs of a few hundred iterations at batch 2 on 64^2 images:
# - OmniAvatar's background network (``use_background``), composited behind the head: without it
#   the dual discriminator's raw image makes G paint the data's backgrounds with density, which
#   swells the head into a blob that fills the frame and keeps no face (the demo's grids before);
# - no blur (EG3D's fades over 6250 iterations: a short run would see colour fields only);
# - R1 gamma 0.2 (StyleGAN2's rule, 0.0002 res^2 / batch, gives 0.4 here; EG3D's 1 is for 512^2 at
#   batch 32) and a wider D (16 -> 32 channels at 64^2): in runs of 250-500 iterations these gave
#   the hair caps and skin tones that EG3D's settings did not;
# - the geometry prior at 100: at 1 a short run's corrections drift the face by centimetres;
# - no recomputation in the backward: at 64^2 it would cost time and save nothing that matters.
TINY_TRAINING = dict(batch=2, d_channel_base=2048, d_channel_max=128, r1_gamma=0.2, blur_sigma=0.0,
                     geometry_prior=100.0, recompute_full_resolution=False)
# The background network at 16^2, upsampled: the data's backgrounds are smooth gradients, and at
# 32^2 it painted them with pixel-sized speckle.
TINY_BACKGROUND = dict(background=True, background_resolution=16)
PRESETS = {  # neural rendering resolution, network sizes, samples per ray, batch
    "tiny": dict(nrr_initial=32, generator={**TINY_GENERATOR, **TINY_BACKGROUND},
                 render=dict(depth_resolution=12, depth_resolution_importance=12), **TINY_TRAINING),
    "64": dict(nrr_initial=64, batch=4),
    "128": dict(nrr_initial=128, batch=4),
    "256": dict(nrr_initial=256, batch=4),
    # SR-free: the generator's image is the rendered image at the dataset's resolution (no
    # super-resolution), rendered with the proposal sampler (RenderConfig sampling="proposal").
    "sr-free-tiny": dict(nrr_initial=32, generator={**TINY_GENERATOR, **TINY_BACKGROUND, "superresolution": False},
                         render=dict(sampling="proposal", proposal_samples=8, depth_resolution=12,
                                     depth_resolution_importance=12, probe_stride=2), **TINY_TRAINING),
    "sr-free-256": dict(nrr_initial=256, batch=4, generator=dict(superresolution=False), render=SR_FREE_RENDER),
    "sr-free-512": dict(nrr_initial=512, batch=4, generator=dict(superresolution=False), render=SR_FREE_RENDER),
}


@dataclasses.dataclass
class GANConfig:
    """Everything a run depends on (saved as ``config.json``); EG3D's FFHQ values by default."""
    dataset: str
    sdf_run: str
    warp: str = "sdf"
    preset: str = "tiny"
    generator: dict = dataclasses.field(default_factory=dict)    # GeneratorConfig fields
    render: dict = dataclasses.field(default_factory=dict)       # RenderConfig fields
    steps: int = 300
    batch: int = 4
    lr_g: float = 0.0025
    lr_d: float = 0.002
    r1_gamma: float = 1.0
    r1_interval: int = 16
    density_reg: float = 0.25
    density_reg_interval: int = 4
    density_reg_p_dist: float = 0.004
    geometry_prior: float = 1.0
    geometry_sigma: float = 0.05
    eikonal: float = 0.0         # |grad (s + delta s)| = 1 at the density regulariser's points (SDF warp only)
    control: float = 1.0
    # Schedules count images (all processes' batches), as EG3D's do.
    blur_sigma: float = 10.0     # D's image and the real raw image blurred, fading to none
    blur_fade_kimg: float = None  # None: EG3D's batch * 200 / 32 (6250 iterations); 0: no blur
    nrr_initial: int = 64
    nrr_final: int = 0           # 0: no schedule
    nrr_fade_kimg: float = 1000.0
    gpc_prob: float = 0.5        # the pose-conditioning swap's probability, faded to from 1
    gpc_fade_kimg: float = 1000.0
    ema_kimg: float = None       # G_ema's half-life; None: EG3D's batch * 10 / 32
    ema_rampup: float = 0.05     # the half-life is at most this fraction of the images seen; 0: none
    beta_lr_mul: float = 0.01    # the SDF's beta (0.001) moves at this fraction of G's learning rate
    d_channel_base: int = 32768
    d_channel_max: int = 512
    mbstd_group: int = 4
    backend: str = "omnifast"
    mixed_precision: bool = True  # CUDA: super-resolution and D in bfloat16 autocast (EG3D: their fp16 layers)
    # The super-resolution's last block (G main) and D's first block (R1), both at the image's
    # resolution, keep only their inputs and run again in the backward: the same gradients without
    # those activations held while the rest of the phase runs. EG3D keeps them.
    recompute_full_resolution: bool = True
    seed: int = 0
    init: str = None             # start from these weights: an EG3D .pkl, an import-pkl or a train-gan run
    device: str = "cpu"
    log_every: int = 1
    image_every: int = 100
    checkpoint_every: int = 100

    @staticmethod
    def with_preset(preset, source="settings", **settings):
        """The preset's settings, then ``settings``; ``source`` names where these came from in errors."""
        if preset not in PRESETS:
            raise RunError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        values = {**PRESETS[preset], **settings}
        return GANConfig.from_dict({**values, "preset": preset}, source)

    def __post_init__(self):
        for name in ("steps", "batch", "r1_interval", "density_reg_interval", "nrr_initial", "log_every",
                     "image_every", "checkpoint_every", "d_channel_base", "d_channel_max", "mbstd_group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("nrr_final",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("mixed_precision", "recompute_full_resolution"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.init is not None and (not isinstance(self.init, str) or not self.init.strip()):
            raise ValueError(f"init must be the path of an EG3D .pkl, an import-pkl folder or a run, got {self.init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed must be an integer in [0, 2^63), got {self.seed!r}")
        # Numbers: finite (a NaN weight would silently turn its loss off), and in range.
        for name, low, inclusive in (("lr_g", 0, False), ("lr_d", 0, False), ("geometry_sigma", 0, False),
                                     ("r1_gamma", 0, True), ("density_reg", 0, True),
                                     ("density_reg_p_dist", 0, True), ("geometry_prior", 0, True),
                                     ("eikonal", 0, True), ("control", 0, True), ("blur_sigma", 0, True),
                                     ("beta_lr_mul", 0, True), ("gpc_prob", 0, True), ("nrr_fade_kimg", 0, False),
                                     ("gpc_fade_kimg", 0, True), ("blur_fade_kimg", 0, True), ("ema_kimg", 0, False),
                                     ("ema_rampup", 0, True)):
            value = getattr(self, name)
            if value is None and name in ("blur_fade_kimg", "ema_kimg"):
                continue  # EG3D's value for the batch
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not number or not math.isfinite(value) or value < low or (value == low and not inclusive):
                bound = f">= {low}" if inclusive else f"> {low}"
                raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
        if self.gpc_prob > 1:
            raise ValueError(f"gpc_prob must be a probability in [0, 1], got {self.gpc_prob!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {self.device!r}") from None
        if self.warp not in ("sdf", "mesh"):
            raise ValueError(f"warp must be 'sdf' or 'mesh', got {self.warp!r}")
        if self.eikonal and self.warp != "sdf":
            raise ValueError(f"eikonal needs warp 'sdf' (the FLAME mesh's closest point has no second "
                             f"derivative), got warp {self.warp!r}")
        if self.eikonal and self.render.get("density", "sdf") != "sdf":
            raise ValueError(f"eikonal needs render density 'sdf' (a final SDF), got {self.render['density']!r}")
        unknown = set(self.generator) - {f.name for f in dataclasses.fields(GeneratorConfig)}
        unknown |= set(self.render) - {f.name for f in dataclasses.fields(RenderConfig)}
        if unknown:
            raise ValueError(f"unknown generator or render setting {sorted(unknown)[0]!r}")
        GeneratorConfig(**self.generator)  # each setting checked now, not when the run builds its networks
        RenderConfig(**self.render)

    def to_dict(self):
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data, source="settings"):
        known = {f.name for f in dataclasses.fields(GANConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunError(f"{source}: unknown setting {unknown[0]!r} (settings are {', '.join(sorted(known))})")
        try:
            return GANConfig(**data)
        except (TypeError, ValueError) as error:
            raise RunError(f"{source}: {error}") from None


# How a run is carried out, not what it trains: resuming may change these; every other setting
# must match the run's own (RUN_DEFINING).
OPERATIONAL = ("steps", "device", "log_every", "image_every", "checkpoint_every", "recompute_full_resolution")
RUN_DEFINING = tuple(f.name for f in dataclasses.fields(GANConfig) if f.name not in OPERATIONAL)


def nrr_at(config, images):
    """The neural rendering resolution after ``images`` training images: EG3D's linear fade from
    the initial to the final one over ``nrr_fade_kimg`` (rounded), or the initial one."""
    if not config.nrr_final:
        return config.nrr_initial
    t = min(1.0, images / (config.nrr_fade_kimg * 1000))
    return int(round((1 - t) * config.nrr_initial + t * config.nrr_final))


def blur_sigma_at(config, images, total_batch):
    """EG3D's blur: ``blur_sigma`` faded linearly to 0 over ``blur_fade_kimg`` (default: total
    batch * 200 / 32 kimg, that is 6250 iterations at any batch)."""
    fade = total_batch * 200 / 32 if config.blur_fade_kimg is None else config.blur_fade_kimg
    return config.blur_sigma * max(0.0, 1 - images / (fade * 1000)) if fade > 0 else 0.0


def swap_prob_at(config, images):
    """EG3D's pose-conditioning swap probability: from 1 to ``gpc_prob`` over ``gpc_fade_kimg``."""
    alpha = min(images / (config.gpc_fade_kimg * 1000), 1.0) if config.gpc_fade_kimg > 0 else 1.0
    return (1 - alpha) + alpha * config.gpc_prob


def ema_beta_at(config, images, total_batch):
    """G_ema's decay per step: half-life ``ema_kimg`` (default: total batch * 10 / 32, that is
    312.5 iterations at any batch), at most ``ema_rampup`` times the images seen (EG3D)."""
    half_life = (total_batch * 10 / 32 if config.ema_kimg is None else config.ema_kimg) * 1000
    if config.ema_rampup:
        half_life = min(half_life, images * config.ema_rampup)
    return 0.5 ** (total_batch / max(half_life, 1e-8))


def _step_seed(seed, step, stream):
    return (seed * 1_000_003 + step * 7919 + stream) % (2 ** 63)


class GANRun:
    """The pieces of a run: the dataset, the frozen warp, G, D, G_ema and the optimisers.
    ``warp`` and ``dataset`` stand in for the config's stage I run and dataset folder (the
    benchmark trains on random images through an untrained W)."""

    def __init__(self, config, rank=0, world_size=1, *, warp=None, dataset=None):
        from ..data import ImageDataset
        from ..render import load_warp

        self.config, self.rank, self.world_size = config, rank, world_size
        device = self.device = torch.device(config.device)
        if warp is None:
            warp = load_warp(config.sdf_run, config.warp, RenderConfig(**config.render).box_warp, device)
        self.dataset = dataset if dataset is not None else ImageDataset(config.dataset, warp.flame.layout)
        fingerprint = self.dataset.meta.get("flame_fingerprint")
        if fingerprint is not None and fingerprint != warp.flame.fingerprint():
            raise RunError(f"{config.dataset}: its labels were made with another FLAME model than the stage I "
                           f"run's {config.sdf_run} (model fingerprints {fingerprint} and "
                           f"{warp.flame.fingerprint()}): make the dataset with that run's FLAME model")
        world = self.dataset.meta.get("world")
        if world is not None:
            centre = torch.tensor(world["centre"])
            if (centre - warp.centre.cpu()).abs().max() > 1e-5 or abs(world["scale"] - warp.world_scale) > 1e-5:
                raise RunError(f"{config.dataset}: its cameras live in a world frame (centre {world['centre']}, "
                               f"scale {world['scale']:.6g}) other than the stage I run's ({warp.centre.tolist()}, "
                               f"{warp.world_scale:.6g}): make the dataset with that run's FLAME model")
        resolution = self.dataset.resolution
        for name in ("nrr_initial", "nrr_final"):
            if getattr(config, name) > resolution:
                raise RunError(f"{name} {getattr(config, name)} exceeds the dataset's images ({resolution}^2): the "
                               "neural rendering resolution is at most the image's")
        if not GeneratorConfig(**config.generator).superresolution:
            for name, allowed, text in (("nrr_initial", (resolution,), ""), ("nrr_final", (resolution, 0), " (or 0)")):
                if getattr(config, name) not in allowed:
                    raise RunError(f"{name} is {getattr(config, name)}, but a generator without super-resolution "
                                   f"renders the dataset's images at their own resolution: {name} must be "
                                   f"{resolution}{text}")
        self.n_shape = warp.flame.layout.n_shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.G = Generator(GeneratorConfig(**config.generator), warp, RenderConfig(**config.render),
                               config.nrr_initial, resolution).to(device)
            self.D = DualDiscriminator(resolution, LABEL_SIZE + warp.param_dim,
                                       warp.flame.layout.n_expr + 3, config.d_channel_base,
                                       config.d_channel_max, mbstd_group=config.mbstd_group).to(device)
        amp = config.mixed_precision and device.type == "cuda"
        self.D.autocast = amp
        if self.G.superresolution is not None:
            self.G.superresolution.autocast = amp
            self.G.superresolution.recompute = config.recompute_full_resolution
        # G_ema shares the frozen warp (its FLAME model and network) rather than holding a copy.
        self.G_ema = copy.deepcopy(self.G, memo={id(warp): warp}).eval().requires_grad_(False)
        if world_size > 1:  # every process starts from rank 0's weights (they are equal when seeded alike)
            for tensor in [*self.G.parameters(), *self.G.buffers(), *self.D.parameters(), *self.D.buffers()]:
                dist.broadcast(tensor.data, 0)
            self.G_ema.load_state_dict(self.G.state_dict())
        # Lazy regularisation (StyleGAN2): the regularised phases' optimisers see scaled lr and betas.
        regularised_g = config.density_reg or config.eikonal
        ratio_g = config.density_reg_interval / (config.density_reg_interval + 1) if regularised_g else 1
        ratio_d = config.r1_interval / (config.r1_interval + 1)
        beta = self.G.renderer.sigmoid_beta
        rest = [p for p in self.G.parameters() if p.requires_grad and p is not beta]
        groups = [{"params": rest}, {"params": [beta], "lr": config.lr_g * ratio_g * config.beta_lr_mul}]
        self.opt_G = torch.optim.Adam(groups, lr=config.lr_g * ratio_g, betas=(0.0, 0.99 ** ratio_g), eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=config.lr_d * ratio_d, betas=(0.0, 0.99 ** ratio_d),
                                      eps=1e-8)
        self.step = 0
        self.clock = None  # called with each phase's name as it starts, None at the end (the benchmark)

    # ---- schedules, in images seen
    def images(self):
        return self.step * self.config.batch * self.world_size

    def nrr(self):
        return nrr_at(self.config, self.images())

    def blur_sigma(self):
        return blur_sigma_at(self.config, self.images(), self.config.batch * self.world_size)

    # ---- data
    def real_batch(self):
        """This process's share of the step's batch, drawn from the step number (exact resume)."""
        g = torch.Generator().manual_seed(_step_seed(self.config.seed, self.step, 1))
        idx = torch.randint(len(self.dataset), (self.config.batch * self.world_size,), generator=g)
        idx = idx[self.rank::self.world_size]
        images, labels = zip(*(self.dataset[int(i)] for i in idx))
        images = torch.stack(images).to(self.device).float() / 127.5 - 1
        return images, torch.stack(labels).to(self.device)

    def fake_inputs(self, g):
        """z, the labels to render with, and the mapping's (EG3D's pose-conditioning swap)."""
        total = self.config.batch * self.world_size  # drawn for the whole batch, then this process's share
        z = torch.randn(total, self.G.config.z_dim, generator=g)
        c = self.dataset.labels[torch.randint(len(self.dataset), (total,), generator=g)]
        swap = torch.rand(total, 1, generator=g) < swap_prob_at(self.config, self.images())
        c_map = torch.where(swap, c.roll(1, 0), c)
        mine = slice(self.rank, None, self.world_size)
        return z[mine].to(self.device), c[mine].to(self.device), c_map[mine].to(self.device)

    # ---- one iteration
    def train_step(self):
        """EG3D's phases, each its own optimiser step: G main; G reg (the density regulariser
        and the eikonal loss, every ``density_reg_interval`` steps, weighted by the interval);
        D main; D reg (R1, every ``r1_interval`` steps, weighted by the interval). Each phase
        draws its own latents and labels. The networks' activations are omnifast's fused op
        under the omnifast backend and plain PyTorch under the references."""
        with fused_activations(self.config.backend == "omnifast"):
            return self._train_step()

    def _train_step(self):
        c, terms = self.config, {}
        self._phase("data")
        torch.manual_seed(_step_seed(c.seed, self.step, 2 + self.rank))  # noise inputs and ray jitter
        g = torch.Generator().manual_seed(_step_seed(c.seed, self.step, 0))
        real, real_c = self.real_batch()
        sigma = self.blur_sigma()
        real_raw = L.blur(L.resize(real, self.nrr()), sigma)  # EG3D blurs the real raw target too
        target_real = L.control_target(real_c, self.n_shape)

        # G main: fool D, keep corrections small, and make the regressed controls match.
        self._phase("G_main")
        z, gen_c, map_c = self.fake_inputs(g)
        self.D.requires_grad_(False)
        out = self._synthesis(self.G, z, gen_c, map_c)
        logits, regressed = L.run_discriminator(self.D, out["image"], out["image_raw"], gen_c, sigma)
        loss_g = L.generator_loss(logits)
        prior = L.geometry_prior(out["delta"], out["prior_sdf"], c.geometry_sigma)
        control = L.control_loss(regressed, L.control_target(gen_c, self.n_shape))
        self.opt_G.zero_grad(set_to_none=True)
        (loss_g + c.geometry_prior * prior + c.control * control).backward()
        terms.update(G=loss_g.item(), geometry_prior=prior.item(), control=control.item())
        del out, logits, regressed  # G main's images and corrections: not held through the next phases
        self._step(self.opt_G, self.G)
        self._average(self.G.backbone.mapping.w_avg)  # each process tracked its share's mean w

        # G reg: EG3D maps and synthesises new latents and regularises their tri-grid.
        if (c.density_reg or c.eikonal) and self.step % c.density_reg_interval == 0:
            self._phase("G_reg")
            z, gen_c, map_c = self.fake_inputs(g)
            planes = self.G.renderer.prepare(self.G.planes(self.G.mapping(z, map_c)), c.backend)
            regularisers = self._geometry_regularisers(planes, gen_c, g)
            self.opt_G.zero_grad(set_to_none=True)
            sum(value * getattr(c, name) * c.density_reg_interval for name, value in regularisers.items()).backward()
            terms.update({name: value.item() for name, value in regularisers.items()})
            del planes, regularisers
            self._step(self.opt_G, self.G)
        self.D.requires_grad_(True)

        # D main: real vs fake, and the control head on real images.
        self._phase("D_main")
        with torch.no_grad():
            z, gen_c, map_c = self.fake_inputs(g)
            fake = self._synthesis(self.G, z, gen_c, map_c)
        # EG3D's two backward passes (generated, then real): D's graph of one batch at a time.
        self.opt_D.zero_grad(set_to_none=True)
        logits_fake, _ = L.run_discriminator(self.D, fake["image"], fake["image_raw"], gen_c, sigma)
        loss_fake = L.discriminator_fake_loss(logits_fake)
        loss_fake.backward()
        del fake, logits_fake
        logits_real, regressed_real = L.run_discriminator(self.D, real, real_raw, real_c, sigma)
        loss_real = L.discriminator_real_loss(logits_real)
        control_real = L.control_loss(regressed_real, target_real)
        (loss_real + c.control * control_real).backward()
        terms.update(D=(loss_fake + loss_real).item(), D_control=control_real.item())
        del logits_real, regressed_real
        self._step(self.opt_D, self.D)

        # D reg: lazy R1 on the real images.
        if c.r1_gamma and self.step % c.r1_interval == 0:
            self._phase("D_reg")
            self.opt_D.zero_grad(set_to_none=True)
            self.D.recompute = c.recompute_full_resolution  # here only: elsewhere it costs more than it saves
            try:
                r1 = L.r1_penalty(self.D, real, real_raw, real_c, sigma).mean()
            finally:
                self.D.recompute = False
            (r1 * (c.r1_gamma / 2) * c.r1_interval).backward()
            terms["r1"] = r1.item()
            self._step(self.opt_D, self.D)

        self._phase("other")
        self._update_ema()
        self.step += 1
        terms.update(nrr=self.nrr(), blur=sigma, beta=self.G.renderer.sigmoid_beta.item())
        self._phase(None)
        return terms

    def _phase(self, name):
        if self.clock is not None:
            self.clock(name)

    def _synthesis(self, G, z, c, c_map):
        return G(z, c, c_map=c_map, update_emas=torch.is_grad_enabled(), backend=self.config.backend,
                 neural_rendering_resolution=self.nrr())

    def _geometry_regularisers(self, planes, c, g):
        """On the G reg phase's tri-grid, at 1000 random points of the box per image: EG3D's
        density regularisation on the SDF correction (the correction there and at points moved
        by ``density_reg_p_dist`` should agree, L1) and, when weighted, the eikonal loss on the
        final SDF ``s + delta s`` (its gradient through the frozen W and the tri-grid's double
        backward)."""
        G, cfg, out = self.G, self.config, {}
        box = G.renderer.config.box_warp
        total, mine = cfg.batch * self.world_size, slice(self.rank, None, self.world_size)
        points = ((torch.rand(total, 1000, 3, generator=g) - 0.5) * box)[mine].to(self.device)
        moved = points + (torch.randn(total, 1000, 3, generator=g) * cfg.density_reg_p_dist)[mine].to(self.device)
        params = c[:, LABEL_SIZE:]
        if cfg.density_reg:
            _, delta, _ = G.renderer.sample(planes, G.decoder, torch.cat([points, moved], 1), params,
                                            backend=cfg.backend)
            out["density_reg"] = L.density_regularisation(delta[:, :points.shape[1]], delta[:, points.shape[1]:])
        if cfg.eikonal:
            gradient = G.renderer.sdf_gradient(planes, G.decoder, points, params, backend=cfg.backend)
            out["eikonal"] = (gradient.norm(dim=-1) - 1).square().mean()
        return out

    def _step(self, optimizer, module):
        """EG3D's update: the gradients of every phase since the last step (the same parameters
        have them in every process), averaged over the processes in one all-reduce, cleaned of
        non-finite values, then the optimiser's step. The phases may use a module any number of
        times (R1's double backward included), which DistributedDataParallel's hooks do not allow."""
        params = [p for p in module.parameters() if p.grad is not None]
        if self.world_size > 1 and params:
            flat = torch.cat([p.grad.flatten() for p in params])
            self._average(flat)
            for p, grad in zip(params, flat.split([p.numel() for p in params])):
                p.grad.copy_(grad.view_as(p))
        for p in params:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        optimizer.step()

    def _average(self, tensor):
        if self.world_size > 1:
            dist.all_reduce(tensor)
            tensor /= self.world_size

    @torch.no_grad()
    def _update_ema(self):
        beta = ema_beta_at(self.config, self.images(), self.config.batch * self.world_size)
        # The shared frozen warp's tensors are G's own: nothing to average or copy.
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            if p_ema is not p:
                p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            if b_ema is not b:
                b_ema.copy_(b)

    def initialise_from(self, source):
        """Start from ``source``'s G, D and G_ema (:func:`pickles.initial_weights`): every
        tensor whose name and shape match is copied (G from its G, else its G_ema), label
        embeddings are widened; the rest keep their initial values. Returns what was done."""
        from .pickles import initial_weights, transfer_tensors

        weights = initial_weights(source)
        report = {}
        for key, fallback in (("G", "G_ema"), ("G_ema", "G"), ("D", None)):
            state = weights.get(key) or weights.get(fallback)
            if state is not None:
                report[key] = transfer_tensors(getattr(self, key), state)
        if not any(r["copied"] for r in report.values()):
            raise RunError(f"--init {source}: none of its tensors fits this run's networks (names and shapes "
                           f"differ: another architecture or preset)")
        return report

    # ---- state
    def state(self):
        """Everything to continue the run, and what generation needs without the dataset."""
        meta = {"image_resolution": self.dataset.resolution, "nrr": self.nrr(), "processes": self.world_size,
                "camera_pivot": self.dataset.meta.get("camera_pivot"),
                "camera_radius": self.dataset.meta.get("camera_radius")}
        return {"config": self.config.to_dict(), "step": self.step, "G": self.G.state_dict(),
                "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(), "opt_G": self.opt_G.state_dict(),
                "opt_D": self.opt_D.state_dict(), "meta": meta}

    def load_state(self, state):
        for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
            getattr(self, name).load_state_dict(state[name])
        self.step = state["step"]

    @torch.no_grad()
    def image_grid(self, count=8):
        """``uint8 [H, W, 3]``: fixed seeds and labels through G_ema, the image above the raw one."""
        g = torch.Generator().manual_seed(self.config.seed + 12345)
        z = torch.randn(count, self.G.config.z_dim, generator=g).to(self.device)
        c = self.dataset.labels[torch.randint(len(self.dataset), (count,), generator=g)].to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            out = self.G_ema(z, c, noise_mode="const", backend=self.config.backend,
                             neural_rendering_resolution=self.nrr())
        image = out["image"]
        raw = L.resize(out["image_raw"], image.shape[-1])
        grid = torch.cat([image, raw], 2)  # [N, 3, 2H, W]
        grid = grid.permute(2, 0, 3, 1).reshape(grid.shape[2], -1, 3)
        return ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()


@torch.no_grad()
def quality_proxy(run, count=32):
    """The Frechet distance between :class:`omnifast.gan.metrics.RandomFeatures` of ``count``
    dataset images and of as many G_ema images for fixed latents and the same images' labels
    (EG3D's metrics condition on the dataset's labels): cheap, needs no weights, logged during
    training as ``fd_random``."""
    from .metrics import RandomFeatures, frechet_distance

    if not hasattr(run, "_proxy"):
        count = min(count, len(run.dataset))
        features = RandomFeatures().to(run.device)
        real = torch.stack([run.dataset[i][0] for i in range(count)]).float() / 127.5 - 1
        run._proxy = features, features(real.to(run.device)), run.dataset.labels[:count]
    features, real, labels = run._proxy
    z = torch.randn(len(labels), run.G.config.z_dim, generator=torch.Generator().manual_seed(run.config.seed + 777))
    images = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for start in range(0, len(labels), 8):
            c = labels[start:start + 8].to(run.device)
            images.append(run.G_ema(z[start:start + 8].to(run.device), c, noise_mode="const",
                                    backend=run.config.backend, neural_rendering_resolution=run.nrr())["image"])
    return frechet_distance(real, features(torch.cat(images)))


def read_gan_checkpoint(run_dir):
    """``(the checkpoint's state on the CPU, its GANConfig)`` of a run folder."""
    folder = RunFolder(run_dir)
    state = folder.load_checkpoint(CHECKPOINT_KEYS)
    return state, GANConfig.from_dict(state["config"], source=folder.file("checkpoint.pt"))


def _restore(run, state, run_dir):
    try:
        run.load_state(state)
    except (RuntimeError, KeyError, ValueError) as error:
        raise RunError(f"{os.path.join(run_dir, 'checkpoint.pt')}: does not fit its own settings ({error})") from None
    return run


def load_gan_run(run_dir, device=None, rank=0, world_size=1):
    state, config = read_gan_checkpoint(run_dir)
    if device is not None:
        config.device = str(device)
    return _restore(GANRun(config, rank, world_size), state, run_dir)


def setup_distributed(device):
    """``(rank, world size, this process's device)``. Under torchrun (WORLD_SIZE > 1) a CUDA
    device means this process's own GPU, cuda:LOCAL_RANK (whatever index it names: a resumed
    run's saved device is its rank 0's), made current before anything is allocated, and the
    processes talk through NCCL; on the CPU through gloo."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    if device.type == "cuda":
        if "LOCAL_RANK" not in os.environ:
            raise RunError("LOCAL_RANK is not set: start the processes with torchrun")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)  # else every rank's context, NCCL's included, is made on cuda:0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def train_gan(config, run_dir, *, resume=False, steps=None, progress=True, log=print, stop_after=None):
    """Train (or continue) a GAN run in ``run_dir``; under torchrun, every process trains its
    share of each batch (the gradients averaged over the processes) and rank 0 writes the run folder.
    Resuming, ``config`` (None: the run's own) may change only the OPERATIONAL settings (the
    device, the length, the logging) and must match the run's in every other one.
    Returns the last step's losses."""
    if config is not None:  # resolved now: the run works from any working directory
        config = dataclasses.replace(config, dataset=os.path.abspath(config.dataset),
                                     sdf_run=os.path.abspath(config.sdf_run),
                                     init=os.path.abspath(config.init) if config.init else None)
    if resume:
        state, saved = read_gan_checkpoint(run_dir)
        if config is not None:
            ours, theirs = saved.to_dict(), config.to_dict()
            changed = [k for k in RUN_DEFINING if ours[k] != theirs[k]]
            if changed:
                raise RunError(f"{os.path.join(run_dir, 'config.json')}: the run has "
                               f"{changed[0]}={ours[changed[0]]!r}; "
                               f"resuming keeps a run's settings, got {theirs[changed[0]]!r}")
        config = saved if config is None else config
        config = dataclasses.replace(config, steps=steps or config.steps)
        check_steps_left(run_dir, state["step"], config.steps)
    elif config is None:
        raise ValueError("train_gan: a new run needs a config")
    else:
        check_new_run_folder(run_dir, "stage II", GANConfig.from_dict)
    rank, world_size, device = setup_distributed(config.device)
    config = dataclasses.replace(config, device=str(device))
    trained_by = (state.get("meta") or {}).get("processes", 1) if resume else world_size
    if trained_by != world_size:  # the batch, and so every schedule and the data order, would change
        raise RunError(f"{run_dir}: the run was trained by {trained_by} process(es); resume it with as many "
                       f"(torchrun --nproc_per_node {trained_by}), not {world_size}")
    # The run is built (the dataset and the stage I run read and checked) before its folder is made.
    run = _restore(GANRun(config, rank, world_size), state, run_dir) if resume else GANRun(config, rank, world_size)
    if config.init and not resume:
        report = run.initialise_from(config.init)
        if rank == 0:
            log(f"train-gan: --init {config.init}: " + "; ".join(
                f"{key} {r['copied']} tensors copied, {len(r['widened'])} widened, {len(r['kept'])} as initialised"
                + (f" ({', '.join(r['kept'][:3])}{', ...' if len(r['kept']) > 3 else ''})" if r["kept"] else "")
                for key, r in report.items()))
    folder = RunFolder(run_dir, create=rank == 0)
    train_log = folder.log(TRAIN_LOG, TRAIN_COLUMNS)
    if rank == 0:
        if resume:
            train_log.truncate(run.step)
        else:
            train_log.remove()
    if rank == 0:
        folder.write_config(config.to_dict())
    writer = _tensorboard(folder.path) if rank == 0 else None
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=config.steps, initial=run.step, desc="train-gan", unit="it", dynamic_ncols=True,
                   mininterval=1.0)
    until = config.steps if stop_after is None else min(stop_after, config.steps)
    start, terms = time.perf_counter(), {}
    saved_step = run.step if folder.has_checkpoint() else None
    if rank == 0 and not resume:  # where the run starts (EG3D's fakes_init): a grid and the quality proxy
        train_log.write({"step": 0, "seconds": 0.0, "fd_random": quality_proxy(run)})
        write_png(os.path.join(folder.path, "images", "step000000.png"), run.image_grid())
    while run.step < until:
        terms = run.train_step()
        # Checked before anything is written: a non-finite step leaves the last good checkpoint
        # and the log as they were.
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        if bad:
            kept = "no checkpoint was written" if saved_step is None else f"the checkpoint of step {saved_step} is kept"
            raise RunError(f"train-gan: the loss term {bad[0]!r} is {terms[bad[0]]} at step {run.step} "
                           f"(non-finite: {', '.join(bad)}); nothing of this step was written and {kept}: "
                           "lower the learning rates or check the data")
        if rank == 0:
            images_due = run.step % config.image_every == 0 or run.step == until
            if images_due:
                terms["fd_random"] = quality_proxy(run)
            if run.step % config.log_every == 0:
                train_log.write({"step": run.step, "seconds": round(time.perf_counter() - start, 3), **terms})
                if writer is not None:
                    for key, value in terms.items():
                        writer.add_scalar(f"{'quality' if key == 'fd_random' else 'loss'}/{key}", value, run.step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{terms[k]:.3f}" for k in ("G", "D", "control") if k in terms}, refresh=False)
            if images_due:
                grid = run.image_grid()
                write_png(os.path.join(folder.path, "images", f"step{run.step:06d}.png"), grid)
                if writer is not None:
                    writer.add_image("G_ema", grid, run.step, dataformats="HWC")
            if run.step % config.checkpoint_every == 0 or run.step == until:
                folder.save_checkpoint(run.state())
                saved_step = run.step
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    if rank == 0 and not folder.has_checkpoint():
        folder.save_checkpoint(run.state())
    return terms


def write_png(path, array):
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def _tensorboard(path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional: the CSV log has every number
        return None
    return SummaryWriter(os.path.join(path, "tensorboard"))
