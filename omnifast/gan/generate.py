"""Controllable generation from a trained stage II run: images for seeds, FLAME parameters and
cameras set by name (the raw neural image, depth and normals beside the final image), sweeps of
expression, jaw, neck or camera with the identity fixed, and the generated head's surface (the
final SDF ``s + delta s``) as a mesh in observation and canonical space."""
import math

import torch
import torch.nn.functional as F

from ..geometry.cameras import (
    FFHQ_RADIUS,
    camera_labels,
    camera_rays,
    ffhq_intrinsics,
    fov_to_intrinsics,
    orbit_cam2world,
)
from ..render import RenderConfig, load_warp
from ..runs import RunError, RunFolder
from .models import Generator, GeneratorConfig
from .train import CHECKPOINT_KEYS, GANConfig

# What each sweep moves and how far (radians for poses; the expression's first coefficient in
# standard deviations): the parameter's slice, the entry, and the range.
SWEEPS = {"jaw": ("jaw", 0, 0.0, 0.35), "expression": ("expression", 0, -2.0, 2.0),
          "neck": ("neck", 1, -0.4, 0.4), "yaw": (None, None, -0.6, 0.6)}


MAX_SEEDS = 4096


def parse_seeds(text):
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    ranges = []
    for part in str(text).split(","):
        first, dash, last = part.strip().partition("-")
        try:
            ranges.append((int(first), int(last) if dash else int(first)))
        except ValueError:
            raise ValueError(f"--seeds: expected numbers and ranges such as 0-7,12, got {text!r}") from None
    for first, last in ranges:
        if not 0 <= first <= last < 2 ** 63:
            raise ValueError(f"--seeds: seeds are integers in [0, 2^63) and ranges go up (first-last), "
                             f"got {first}-{last} in {text!r}")
    count = sum(last - first + 1 for first, last in ranges)
    if count > MAX_SEEDS:
        raise ValueError(f"--seeds {text!r} names {count} seeds; at most {MAX_SEEDS} at a time (a grid row each)")
    return [seed for first, last in ranges for seed in range(first, last + 1)]


class HeadGenerator:
    """A trained run's generator (its EMA weights), the frozen warp of its stage I run and its
    dataset's camera frame."""

    def __init__(self, run_dir, device="cpu", backend="omnifast"):
        folder = RunFolder(run_dir)
        state = folder.load_checkpoint(CHECKPOINT_KEYS)
        config = GANConfig.from_dict(state["config"], source=folder.file("checkpoint.pt"))
        meta = state.get("meta") or _meta_from_dataset(config)
        self.device, self.backend = torch.device(device), backend
        render = RenderConfig(**config.render)
        warp = load_warp(config.sdf_run, config.warp, render.box_warp, self.device)
        self.G = Generator(GeneratorConfig(**config.generator), warp, render, meta["nrr"],
                           meta["image_resolution"]).to(self.device)
        try:
            self.G.load_state_dict(state["G_ema"])
        except RuntimeError as error:
            raise RunError(f"{folder.file('checkpoint.pt')}: does not fit its own settings ({error})") from None
        self.G.eval().requires_grad_(False)
        self.layout, self.warp = warp.flame.layout, warp
        self.pivot = tuple(meta.get("camera_pivot") or (0.0, 0.0, 0.0))
        self.radius = float(meta.get("camera_radius") or FFHQ_RADIUS)
        self.step, self.config = state["step"], config
        self.depth_range = (render.ray_start, render.ray_end)

    def labels(self, params, yaw=0.0, pitch=0.0, fov=None):
        """``[B, 25 + P]`` for FLAME ``params [B, P]`` seen from ``yaw``/``pitch`` radians off
        the front (``fov`` degrees, default EG3D's FFHQ focal length)."""
        batch = params.shape[0]
        cam2world = orbit_cam2world(math.pi / 2 + yaw, math.pi / 2 + pitch, self.radius, self.pivot, batch=batch)
        intrinsics = ffhq_intrinsics() if fov is None else fov_to_intrinsics(fov)
        return torch.cat([camera_labels(cam2world, intrinsics), params.cpu().float()], -1).to(self.device)

    def latents(self, seeds):
        return latents(seeds, self.G.z_dim, self.device)

    @torch.no_grad()
    def synthesize(self, seeds, labels, truncation=1.0):
        """``{image, raw, depth, normals, opacity}`` for each seed under each label row: the
        mapping sees the front camera (EG3D's generation), so the identity is the same from
        every camera. Images in [-1, 1]; normals (world, unit) ``[N, 3, R, R]``."""
        z = self.latents(seeds)
        front = self.labels(labels[:, 25:], 0.0, 0.0)
        ws = self.G.mapping(z, front, truncation_psi=truncation)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            out = self.G.synthesis(ws, labels, backend=self.backend, noise_mode="const",
                                   generator=torch.Generator(self.device).manual_seed(0))
        cam2world, intrinsics = labels[:, :16].reshape(-1, 4, 4), labels[:, 16:25].reshape(-1, 3, 3)
        normals = depth_normals(out["image_depth"], cam2world, intrinsics)
        return {"image": out["image"], "raw": out["image_raw"], "depth": out["image_depth"],
                "normals": normals, "opacity": out["opacity"]}

    @torch.no_grad()
    def final_sdf(self, seed, params, points, truncation=1.0, chunk=65536):
        """``s + delta s`` at world ``points [M, 3]`` for one seed and ``params [1, P]``."""
        z = self.latents([seed])
        ws = self.G.mapping(z, self.labels(params, 0.0, 0.0), truncation_psi=truncation)
        planes = self.G.planes(ws, noise_mode="const")
        params = params.to(self.device)
        values = []
        for start in range(0, points.shape[0], chunk):
            part = points[start:start + chunk].to(self.device)[None]
            _, delta, prior = self.G.renderer.sample(planes, self.G.decoder, part, params, backend=self.backend)
            values.append((prior + delta[..., 0])[0].cpu())
        return torch.cat(values)

    def mesh(self, seed, params, resolution=128, truncation=1.0, canonical=False):
        """The zero level set of the final SDF for a seed, in FLAME's metres: ``(verts [V, 3],
        faces [F, 3])`` posed by ``params [1, P]`` or, with ``canonical``, in canonical space
        (the neutral head: no expression or pose, mean shape)."""
        from ..sdf.export import check_grid_memory, zero_level_set

        check_grid_memory(resolution, "mesh resolution")
        if canonical:
            params = torch.zeros_like(params)
        half = self.G.renderer.config.box_warp / 2
        axis = torch.linspace(-half, half, resolution)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        values = self.final_sdf(seed, params, grid, truncation).reshape(resolution, resolution, resolution)
        verts, faces = zero_level_set(values, (axis,) * 3, "mesh: the generated SDF",
                                      "the run has not learnt a head (yet)")
        return self.warp.to_flame(verts.to(self.warp.centre)).cpu(), faces

    def sweep_params(self, kind, base, frames):
        """``(params [frames, P], yaws [frames])`` moving one control from its range's start to
        its end, everything else as in ``base [1, P]``."""
        if kind not in SWEEPS:
            raise ValueError(f"--sweep must be one of {', '.join(SWEEPS)}, got {kind!r}")
        part, index, low, high = SWEEPS[kind]
        values = torch.linspace(low, high, frames)
        params = base.repeat(frames, 1)
        yaws = torch.zeros(frames)
        if part is None:
            yaws = values
        else:
            params[:, self.layout.slices[part].start + index] = values
        return params, yaws


OMNIAVATAR_LABEL = 206  # OmniAvatar's FLAME numbers: 100 shape, 100 expression, 3 neck, 3 jaw


def read_label_pool(path, layout):
    """A label pool ``[K, 25 + F]`` (OmniAvatar's ``--label-pool``: 25 camera numbers, then
    FLAME's) as ``[K, layout.size]`` FLAME parameters in the run's layout: rows of the run's own
    width as they are; OmniAvatar's 206 numbers keep the run's leading shape and expression
    coefficients (FLAME's are ordered by variance), its neck and jaw."""
    import numpy as np

    try:
        pool = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"--labels {path}: not a readable .npy array ({error})") from None
    if not isinstance(pool, np.ndarray) or pool.ndim != 2 or pool.shape[0] < 1 \
            or pool.dtype.kind not in "iuf":
        got = f"{pool.dtype} {list(pool.shape)}" if isinstance(pool, np.ndarray) else type(pool).__name__
        raise ValueError(f"--labels {path}: expected a .npy [K, 25 + F] array of real numbers, got {got}")
    pool = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))
    if not torch.isfinite(pool).all():
        row = int((~torch.isfinite(pool)).any(1).nonzero()[0])
        raise ValueError(f"--labels {path}: row {row} holds a non-finite number")
    flame = pool[:, 25:]
    if flame.shape[1] == layout.size:
        params = flame
    elif flame.shape[1] == OMNIAVATAR_LABEL and layout.n_shape <= 100 and layout.n_expr <= 100 \
            and not layout.global_pose:
        params = torch.cat([flame[:, :layout.n_shape], flame[:, 100:100 + layout.n_expr], flame[:, 200:206]], 1)
    else:
        raise ValueError(f"--labels {path}: rows must hold 25 camera numbers and {layout.size} FLAME numbers (this "
                         f"run's layout) or OmniAvatar's {OMNIAVATAR_LABEL}, got {pool.shape[1]} numbers")
    layout.check(params, f"--labels {path}")
    return params


def rows_for_seeds(pool, seeds):
    """One pool row per seed, drawn with the seed (the same seed, the same row)."""
    return torch.stack([pool[int(torch.randint(pool.shape[0], (1,), generator=torch.Generator().manual_seed(s)))]
                        for s in seeds])


def latents(seeds, z_dim, device):
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(device)


class ImportedGenerator:
    """An EG3D or OmniAvatar network imported with ``omnifast import-pkl`` (its G_ema): EG3D's
    cameras around its ``avg_camera_pivot`` at ``avg_camera_radius``, labels of 25 numbers (an
    OmniAvatar network's followed by zero FLAME parameters: the mean face, mouth closed), the
    mapping conditioned on the front camera as EG3D's ``gen_samples.py`` does."""
    layout = None

    def __init__(self, G, device="cpu", backend="omnifast"):
        if backend != "omnifast":
            raise ValueError(f"--backend {backend}: an imported network renders with omnifast's kernels only")
        self.device, self.G = torch.device(device), G.to(device)
        rendering = G.rendering_kwargs
        self.radius = float(rendering.get("avg_camera_radius", FFHQ_RADIUS))
        self.pivot = tuple(rendering.get("avg_camera_pivot", (0.0, 0.0, 0.0)))
        self.depth_range = (rendering["ray_start"], rendering["ray_end"])
        self.step = None

    def labels(self, params, yaw=0.0, pitch=0.0, fov=None):
        cam2world = orbit_cam2world(math.pi / 2 + yaw, math.pi / 2 + pitch, self.radius, self.pivot,
                                    batch=params.shape[0])
        intrinsics = ffhq_intrinsics() if fov is None else fov_to_intrinsics(fov)
        labels = camera_labels(cam2world, intrinsics)
        flame = torch.zeros(len(labels), getattr(self.G, "feature_dim", 0))
        return torch.cat([labels, flame], 1).to(self.device)

    @torch.no_grad()
    def synthesize(self, seeds, labels, truncation=1.0):
        z = latents(seeds, self.G.z_dim, self.device)
        ws = self.G.mapping(z, self.labels(labels[:, :0], 0.0, 0.0), truncation_psi=truncation)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            out = self.G.synthesis(ws, labels, noise_mode="const")
        cam2world, intrinsics = labels[:, :16].reshape(-1, 4, 4), labels[:, 16:25].reshape(-1, 3, 3)
        depth = out["image_depth"]
        return {"image": out["image"], "raw": out["image_raw"], "depth": depth,
                "normals": depth_normals(depth, cam2world, intrinsics), "opacity": torch.ones_like(depth)}

    def sweep_params(self, kind, base, frames):
        if kind != "yaw":
            raise ValueError(f"--sweep {kind}: an imported network has no FLAME controls here; it sweeps yaw only")
        return base.repeat(frames, 1), torch.linspace(SWEEPS["yaw"][2], SWEEPS["yaw"][3], frames)

    def mesh(self, *args, **kwargs):
        raise ValueError("--mesh: an imported network has no signed distance to mesh (it needs a train-gan run)")


def load_generator(run_dir, device="cpu", backend="omnifast"):
    """The generator of a train-gan run or of an imported EG3D or OmniAvatar network."""
    from .pickles import load_imported

    imported = load_imported(run_dir)
    if imported is not None:
        return ImportedGenerator(imported, device, backend)
    return HeadGenerator(run_dir, device, backend)


def depth_normals(depth, cam2world, intrinsics):
    """Unit world normals ``[N, 3, R, R]`` of the surface a depth image ``[N, 1, R, R]`` sees
    (finite differences of the back-projected points), turned to face the camera."""
    n, _, r, _ = depth.shape
    origins, directions = camera_rays(cam2world, intrinsics, r)
    points = (origins + directions * depth.reshape(n, -1, 1)).reshape(n, r, r, 3)
    du, dv = torch.gradient(points, dim=(2, 1))
    normals = F.normalize(torch.cross(du, dv, dim=-1), dim=-1)
    facing = (normals * directions.reshape(n, r, r, 3)).sum(-1, keepdim=True) > 0
    normals = torch.where(facing, -normals, normals)
    return normals.permute(0, 3, 1, 2)


def to_uint8(images, low=-1.0, high=1.0):
    """``[N, C, H, W]`` in ``[low, high]`` -> ``uint8 [N, H, W, 3]``."""
    x = ((images.float().clamp(low, high) - low) / (high - low) * 255).round().byte()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(cells, rows):
    """``uint8 [N, H, W, 3]`` cells, row-major, -> one ``[rows * H, (N / rows) * W, 3]`` image."""
    n, h, w, c = cells.shape
    return cells.reshape(rows, n // rows, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, -1, c)


def _meta_from_dataset(config):
    from ..data import ImageDataset
    from .train import nrr_at

    try:
        dataset = ImageDataset(config.dataset)
    except (FileNotFoundError, ValueError) as error:
        raise RunError(f"this run's checkpoint predates its stored image size and camera, and its dataset "
                       f"cannot be read: {error}") from None
    return {"image_resolution": dataset.resolution, "nrr": nrr_at(config, 10 ** 15),
            "camera_pivot": dataset.meta.get("camera_pivot"), "camera_radius": dataset.meta.get("camera_radius")}
