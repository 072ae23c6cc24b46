"""The ``omnifast train-gan`` (one process, or several under torchrun) and ``omnifast generate``
commands."""
import json
import math
import os

import numpy as np

from ..render.backends import BACKENDS


def add_parsers(sub):
    from ..sdf.commands import SEED, at_least, positive_float
    from .train import PRESETS

    train = sub.add_parser("train-gan", help="train OmniAvatar's generator (stage II) on a dataset")
    train.add_argument("--data", help="the dataset folder or zip (make-dataset; required for a new run)")
    train.add_argument("--sdf-run", help="the stage I run folder whose semantic SDF warps the samples")
    train.add_argument("--out", required=True, help="run folder (config, checkpoint, logs, image grids)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--init", help="start a new run from these weights: an EG3D network .pkl, an import-pkl "
                                      "folder or a train-gan run (tensors of the same name and shape)")
    train.add_argument("--preset", choices=list(PRESETS),
                       help="network sizes and neural rendering resolution (default: tiny on a CPU, 64 on CUDA)")
    train.add_argument("--config", help="a JSON file of settings (the format of a run's config.json)")
    train.add_argument("--steps", type=at_least(1), help="training iterations (default 300)")
    train.add_argument("--batch", type=at_least(1), help="images per process and iteration")
    train.add_argument("--warp", choices=["sdf", "mesh"], help="the stage I network (default) or the exact mesh")
    train.add_argument("--backend", choices=list(BACKENDS), help="renderer kernels (default omnifast)")
    train.add_argument("--nrr-final", type=at_least(8), help="neural rendering resolution to fade to")
    train.add_argument("--lr-g", type=positive_float)
    train.add_argument("--lr-d", type=positive_float)
    train.add_argument("--seed", type=SEED)
    train.add_argument("--device", help="cpu or cuda, also when resuming (default: cuda when available; "
                       "under torchrun: cuda:LOCAL_RANK)")
    train.add_argument("--image-every", type=at_least(1), help="iterations between image grids (default 100)")
    train.add_argument("--checkpoint-every", type=at_least(1), help="iterations between checkpoints (default 100)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen = sub.add_parser("generate", help="images, sweeps (video) and meshes from a trained stage II run")
    gen.add_argument("run", help="a train-gan run folder")
    gen.add_argument("--seeds", default="0-3", help="seeds and ranges, e.g. 0-7,12 (default 0-3)")
    gen.add_argument("--out", required=True, help="the PNG grid: a row per seed, a column per setting")
    gen.add_argument("--params", nargs="*", metavar="NAME=V1,V2",
                     help="FLAME parameters by name (shape, expression, neck, jaw); a part's values fill its "
                     "leading entries, the rest are zero")
    gen.add_argument("--labels", metavar="POOL.npy",
                     help="draw each seed's FLAME parameters from a label pool: rows of 25 camera numbers and "
                     "OmniAvatar's 206 FLAME numbers (its ffhq labels) or this run's own layout")
    gen.add_argument("--yaw", type=float, default=0.0, help="camera yaw off the front, radians")
    gen.add_argument("--pitch", type=float, default=0.0, help="camera pitch off the front, radians")
    gen.add_argument("--fov", type=positive_float, help="field of view in degrees (default: EG3D's FFHQ camera)")
    gen.add_argument("--truncation", type=float, default=1.0, help="truncation psi (default 1: none)")
    gen.add_argument("--sweep", choices=["jaw", "expression", "neck", "yaw"],
                     help="move one control across its range, the identity fixed: a column per frame")
    gen.add_argument("--frames", type=at_least(2), default=8, help="settings of a sweep (default 8)")
    gen.add_argument("--video", help="the sweep as a video (.mp4 or .gif), the seeds side by side")
    gen.add_argument("--mesh", help="PLY of the first seed's surface (final SDF) in FLAME's metres; "
                     "NAME_canonical.ply beside it is the canonical one")
    gen.add_argument("--mesh-resolution", type=at_least(16), default=128, help="marching cubes grid (default 128)")
    gen.add_argument("--extras", action="store_true",
                     help="also write the raw neural image, depth and normals grids beside --out")
    gen.add_argument("--backend", choices=list(BACKENDS), default="omnifast")
    gen.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ev = sub.add_parser("eval-gan", help="control accuracy of a stage II run against the FLAME mesh")
    ev.add_argument("run", help="a train-gan run folder")
    ev.add_argument("--samples", type=at_least(1), default=8, help="random seeds, FLAME parameters and cameras (8)")
    ev.add_argument("--seed", type=SEED, default=0)
    ev.add_argument("--mesh-resolution", type=at_least(16), default=64, help="marching cubes grid (default 64)")
    ev.add_argument("--quality-images", type=at_least(0), default=64,
                    help="dataset and generated images for the image quality (default 64; 0: skip)")
    ev.add_argument("--inception", help="the Inception network for FID and KID: StyleGAN2-ADA's "
                    "inception-2015-12-05.pt or StyleGAN3's .pkl (not downloaded; without it, only the proxy)")
    ev.add_argument("--json", help="also write the table as JSON")
    ev.add_argument("--backend", choices=list(BACKENDS), default="omnifast")
    ev.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    imp = sub.add_parser("import-pkl", help="a released EG3D network pickle as a run folder generate reads "
                                            "(read without running code from the file)")
    imp.add_argument("network", help="EG3D's network-snapshot-*.pkl (a dict with G, D, G_ema)")
    imp.add_argument("--out", required=True, help="the new run folder")
    return {"train-gan": train_gan_command, "generate": generate_command, "eval-gan": eval_gan_command,
            "import-pkl": import_pkl_command}


def import_pkl_command(args):
    from .pickles import import_network

    config = import_network(args.network, args.out)
    print(json.dumps({"out": args.out, "networks": {k: v["class"] for k, v in config["networks"].items()},
                      "neural_rendering_resolution": config["neural_rendering_resolution"]}))
    return 0


def eval_gan_command(args):
    import sys

    from ..runs import atomic_write, check_output
    from ..sdf.commands import device_of
    from ..sdf.export import check_grid_memory
    from .evaluate import evaluate_gan
    from .pickles import load_imported

    if load_imported(args.run) is not None:
        raise ValueError(f"{args.run}: an imported network has no FLAME controls to evaluate; eval-gan reads "
                         f"train-gan runs (use generate to see its images)")
    if args.json:
        check_output(args.json, "--json", (".json",))
    check_grid_memory(args.mesh_resolution, "--mesh-resolution")
    result = evaluate_gan(args.run, args.samples, device_of(args.device), args.backend, args.seed,
                          args.mesh_resolution, log=lambda text: print(text, file=sys.stderr),
                          quality_images=args.quality_images, inception=args.inception)
    text = json.dumps(result, indent=2)
    print(text, flush=True)  # the table first: a failed write does not lose it
    if args.json:
        atomic_write(args.json, lambda f: f.write(text), binary=False)
    return 0


def generate_command(args):
    import torch

    from ..runs import check_memory, check_output
    from ..sdf.commands import device_of
    from ..sdf.export import check_grid_memory, parse_params
    from .generate import load_generator, parse_seeds

    seeds = parse_seeds(args.seeds)
    if args.video and not args.sweep:
        raise ValueError("--video needs --sweep (what the video moves)")
    if not math.isfinite(args.truncation):
        raise ValueError(f"--truncation must be a finite number, got {args.truncation}")
    check_output(args.out, "--out", (".png",))
    if args.video:
        check_output(args.video, "--video", (".mp4", ".gif"))
        check_video_writer(args.video)
    if args.mesh:
        check_output(args.mesh, "--mesh", (".ply",))
    if args.mesh:
        check_grid_memory(args.mesh_resolution, "--mesh-resolution")
    generator = load_generator(args.run, device_of(args.device), args.backend)
    if generator.layout is None and args.params:
        raise ValueError("--params: an imported network takes no FLAME parameters here (an OmniAvatar network "
                         "renders its mean face)")
    # Every image of the grid (and the extras') is held, then joined: check the size first.
    cells = len(seeds) * (args.frames if args.sweep else 1) * (4 if args.extras else 1)
    check_memory(3 * cells * 3 * generator.G.img_resolution ** 2,
                 f"--seeds {args.seeds} ({len(seeds)} seeds, {cells} images)")
    if args.labels and args.params:
        raise ValueError("--labels and --params both set the FLAME parameters: give one")
    if args.labels and generator.layout is None:
        raise ValueError("--labels: an imported network takes no FLAME parameters here (an OmniAvatar network "
                         "renders its mean face)")
    if args.labels:
        from .generate import read_label_pool, rows_for_seeds

        base = rows_for_seeds(read_label_pool(args.labels, generator.layout), seeds)
    else:
        base = parse_params(generator.layout, args.params) if generator.layout is not None else torch.zeros(1, 0)
    written, settings = write_generation(generator, seeds, base, args.out,
                                         sweep=args.sweep, frames=args.frames, yaw=args.yaw, pitch=args.pitch,
                                         fov=args.fov, truncation=args.truncation, extras=args.extras,
                                         video=args.video, mesh=args.mesh, mesh_resolution=args.mesh_resolution)
    print(json.dumps({"step": generator.step, "seeds": seeds, "settings": settings, "written": written}))
    return 0


def write_generation(generator, seeds, base, out, *, sweep=None, frames=8, yaw=0.0, pitch=0.0, fov=None,
                     truncation=1.0, extras=False, video=None, mesh=None, mesh_resolution=128):
    """What ``omnifast generate`` writes for a loaded :class:`HeadGenerator`: the PNG grid at
    ``out`` (a row per seed, a column per setting of ``sweep``), with ``extras`` the raw, depth
    and normals grids beside it, the sweep as a ``video`` (.mp4 or .gif), and the first seed's
    ``mesh`` (PLY, and its canonical twin). Returns ``(written paths, settings)``."""

    import torch

    from ..sdf.export import write_ply
    from .generate import grid, to_uint8
    from .train import write_png

    if video and os.path.splitext(video)[1].lower() not in (".mp4", ".gif"):
        raise ValueError(f"--video must end in .mp4 or .gif, got {video!r}")
    if video:
        check_video_writer(video)
    def labels_of(row):  # every setting of one row of FLAME parameters
        params, yaws = generator.sweep_params(sweep, row, frames) if sweep else (row, torch.zeros(1))
        return torch.cat([generator.labels(params[i:i + 1], yaw + float(yaws[i]), pitch, fov)
                          for i in range(params.shape[0])])

    # base: one row for every seed, or a row per seed (a label pool's draws)
    labels = labels_of(base[:1])
    settings = labels.shape[0]
    near, far = generator.depth_range
    rows = {key: [] for key in ("image", "raw", "depth", "normals")}
    for index, seed in enumerate(seeds):  # a row: one seed under every setting
        if base.shape[0] > 1:
            labels = labels_of(base[index:index + 1])
        out_images = generator.synthesize([seed] * settings, labels, truncation)
        depth = torch.where(out_images["opacity"] > 0.5, out_images["depth"], torch.full_like(out_images["depth"], far))
        size = out_images["image"].shape[-2:]  # the neural images enlarged (nearest) to sit beside the final one
        enlarge = lambda t, size=size: torch.nn.functional.interpolate(t, size=size, mode="nearest")  # noqa: E731
        rows["image"].append(to_uint8(out_images["image"]))
        rows["raw"].append(to_uint8(enlarge(out_images["raw"])))
        rows["depth"].append(to_uint8(enlarge(depth), far, near))
        rows["normals"].append(to_uint8(enlarge(out_images["normals"] * (out_images["opacity"] > 0.5))))
    cells = {key: np.concatenate(value) for key, value in rows.items()}
    write_png(out, grid(cells["image"], len(seeds)))
    written = [out]
    if extras:
        stem, ext = os.path.splitext(out)
        for key in ("raw", "depth", "normals"):
            write_png(f"{stem}_{key}{ext}", grid(cells[key], len(seeds)))
            written.append(f"{stem}_{key}{ext}")
    if video:
        by_seed = cells["image"].reshape(len(seeds), settings, *cells["image"].shape[1:])
        write_video(video, [np.concatenate(list(by_seed[:, i]), axis=1) for i in range(settings)])
        written.append(video)
    if mesh:
        for canonical, path in ((False, mesh), (True, os.path.splitext(mesh)[0] + "_canonical.ply")):
            verts, faces = generator.mesh(seeds[0], base[:1], mesh_resolution, truncation, canonical)
            write_ply(path, verts, faces)
            written.append(path)
    return written, settings


def check_video_writer(path, what=None):
    """An MP4 needs imageio's ffmpeg plugin (the ``imageio-ffmpeg`` package); without it imageio
    would hand the frames to another writer that fails on them, so say so before any work."""

    from ..runs import RunError

    if os.path.splitext(path)[1].lower() == ".gif":
        return
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise RunError(f"{what or '--video ' + path}: writing MP4 needs the imageio-ffmpeg package, which is not "
                       "installed (pip install imageio-ffmpeg, or pip install 'omnifast[gan]')"
                       + ("" if what else "; or give a .gif")) from None


def write_video(path, frames, fps=12):
    """MP4 (through imageio's ffmpeg) or GIF, written to a temporary name and renamed."""

    import imageio.v2 as imageio

    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ext = os.path.splitext(name)[1].lower()
    partial = os.path.join(folder, f".{name}.partial{ext}")
    try:
        if ext == ".gif":
            imageio.mimwrite(partial, frames, duration=1000 / fps, loop=0)
        else:
            imageio.mimwrite(partial, frames, format="FFMPEG", fps=fps, macro_block_size=1)
        # ffmpeg can fail (a full disk) without imageio raising: an empty result is an error, and
        # the file already at `path` stays.
        if not os.path.isfile(partial) or os.path.getsize(partial) == 0:
            raise OSError(f"{path}: the video could not be written (nothing came out; is the disk full?)")
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


FLAGS = ("steps", "batch", "warp", "backend", "nrr_final", "lr_g", "lr_d", "seed", "image_every", "checkpoint_every")


def train_gan_command(args):
    from ..runs import RunError, RunFolder, check_output, read_settings
    from ..sdf.commands import device_of
    from .train import GANConfig, train_gan

    check_output(args.out, "--out", what="folder")
    # A resumed run starts from its own settings and a new one from the preset; then --config and
    # the flags, so that every flag given is honoured (train_gan refuses one that would change
    # what a resumed run trains). The device is the command line's, as for a new run.
    device = device_of(args.device)
    settings = RunFolder(args.out).read_config() if args.resume else {}
    if args.resume and not {"dataset", "sdf_run"} <= set(settings):
        raise RunError(f"{args.out} is not a stage II run (its config.json names no dataset and stage I run)")
    if args.config:
        settings.update(read_settings(args.config))
    settings.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    if args.init is not None and args.resume:
        raise ValueError("--init starts a new run from other weights; a resumed run continues from its own")
    if args.init is not None:  # GANConfig refuses an empty one
        settings["init"] = args.init
    if args.data:
        settings["dataset"] = args.data
    if args.sdf_run:
        settings["sdf_run"] = args.sdf_run
    if "dataset" not in settings or "sdf_run" not in settings:
        raise RunError("a new run needs --data and --sdf-run (or a --config naming them)")
    preset = settings.pop("preset", None)
    preset = args.preset or preset or ("64" if device.startswith("cuda") else "tiny")
    # A bad value is named with where it came from: the resumed run's settings, --config, the flags.
    origins = [os.path.join(args.out, "config.json")] * args.resume + [args.config] * bool(args.config)
    source = f"settings ({', '.join([*origins, 'the command line'])})"
    config = GANConfig.with_preset(preset, source, **{**settings, "device": device})
    terms = train_gan(config, args.out, resume=args.resume, steps=args.steps, progress=not args.no_progress)
    print(json.dumps({k: round(v, 5) for k, v in terms.items()}))
    return 0
