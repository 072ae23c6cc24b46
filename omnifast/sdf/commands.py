"""The semantic-SDF commands: ``train-sdf``, ``eval-sdf`` and ``export-sdf``."""
import argparse
import dataclasses
import json
import math
import os

import torch

PRESETS = {  # per device type: network, meshes per step, samples per mesh
    "cpu": dict(network="small", batch=4, surface_points=1024, space_points=2048),
    "cuda": dict(network="full", batch=16, surface_points=4096, space_points=8192),
}
# Flags that set a training setting of the same name.
SETTING_FLAGS = ("flame_dir", "n_shape", "n_expr", "steps", "batch", "surface_points", "space_points", "lr",
                 "eval_every", "checkpoint_every", "seed")


def at_least(low, below=None):
    """An argparse type: an integer >= low (and < below)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (below is not None and value >= below):
            bound = f"in [{low}, {below})" if below is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


SEED = at_least(0, 2 ** 63)  # every --seed: it must fit torch's 64-bit generators


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def device_of(name):
    """The ``--device`` to run on (default: cuda when there is one), refused with a clear error
    when this machine does not have it."""
    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__} "
                             f"sees none); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return name


def config_from(args, device, base=None):
    """Training settings: ``base`` (a run's own, when resuming) or the device's preset, then a
    ``--config`` file (a run's ``config.json`` format: every setting, the parameter
    distribution and loss weights included), then the flags given."""
    from ..runs import read_settings
    from .network import NetworkConfig
    from .train import TrainConfig

    if base is None:
        preset = dict(PRESETS["cuda" if device.startswith("cuda") else "cpu"])
        network = NetworkConfig.preset(preset.pop("network"))
        base = TrainConfig(flame_dir=args.flame_dir, network=network, device=device, **preset)
    settings = base.to_dict()
    if args.config:
        settings.update(read_settings(args.config))
    settings.update({key: getattr(args, key) for key in SETTING_FLAGS if getattr(args, key, None) is not None})
    if args.network:
        settings["network"] = dataclasses.asdict(NetworkConfig.preset(args.network))
    settings["device"] = device
    return TrainConfig.from_dict(settings, source=args.config or "the command line")


def add_train_arguments(parser):
    parser.add_argument("--config", help="a JSON file of training settings (the format of a run's config.json)")
    parser.add_argument("--n-shape", type=at_least(1), help="FLAME shape coefficients used (default 100)")
    parser.add_argument("--n-expr", type=at_least(0), help="FLAME expression coefficients used (default 50)")
    parser.add_argument("--steps", type=at_least(1), help="training steps (default 2000)")
    parser.add_argument("--batch", type=at_least(1), help="meshes per step (default 4 on CPU, 16 on CUDA)")
    parser.add_argument("--surface-points", type=at_least(1), help="surface samples per mesh")
    parser.add_argument("--space-points", type=at_least(1), help="off-surface samples per mesh")
    parser.add_argument("--network", choices=["small", "full"],
                        help="network size (default small on CPU, full on CUDA)")
    parser.add_argument("--lr", type=positive_float, help="peak learning rate (default 2e-3)")
    parser.add_argument("--eval-every", type=at_least(1), help="steps between evaluations (default 500)")
    parser.add_argument("--checkpoint-every", type=at_least(1), help="steps between checkpoints (default 250)")
    parser.add_argument("--seed", type=SEED, help="seed of the weights and the data stream (default 0)")
    parser.add_argument("--device", help="cpu or cuda[:i] (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_export_arguments(parser):
    parser.add_argument("--resolution", type=at_least(8), default=128, help="marching-cubes grid size")
    parser.add_argument("--preview-size", type=at_least(8), default=128, help="pixels per preview image")


def add_parsers(sub):
    train = sub.add_parser("train-sdf", help="train a semantic SDF on a FLAME model")
    train.add_argument("--flame-dir", help="FLAME_NEUTRAL.pkl + flame_static_embedding.pkl (required for a new run)")
    train.add_argument("--out", required=True, help="run folder (config, checkpoint, CSV logs)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint (--steps may extend it; its "
                            "other settings are kept, and a flag that changes one is refused)")
    add_train_arguments(train)

    evaluate = sub.add_parser("eval-sdf", help="evaluate a trained semantic SDF on held-out parameters")
    evaluate.add_argument("run")
    evaluate.add_argument("--meshes", type=at_least(1), default=16, help="held-out parameter vectors")
    evaluate.add_argument("--points", type=at_least(1), default=4096, help="query points per mesh")
    evaluate.add_argument("--device")
    evaluate.add_argument("--json", help="also write the metrics here (default RUN/eval.json)")

    export = sub.add_parser("export-sdf", help="zero level set (PLY) and PNG previews")
    export.add_argument("run")
    export.add_argument("--params", nargs="*", default=[], metavar="NAME=V1,V2,...",
                        help="FLAME parameters by part (shape, expression, neck, jaw); the rest zero")
    export.add_argument("--out", required=True, help="mesh path (.ply)")
    export.add_argument("--previews", help="also write the preview sheet here (PNG)")
    export.add_argument("--device")
    add_export_arguments(export)
    return {"train-sdf": train_sdf, "eval-sdf": eval_sdf, "export-sdf": export_sdf}


def train_sdf(args):
    from ..runs import RunFolder, check_output
    from .evaluate import format_metrics
    from .train import TrainConfig, train

    check_output(args.out, "--out", what="folder")
    device = device_of(args.device)
    if args.resume:
        folder = RunFolder(args.out)
        run_config = TrainConfig.from_dict(folder.read_config(), source=folder.file("config.json"))
        config = config_from(args, device, base=run_config)
    else:
        if not args.flame_dir:
            raise ValueError("--flame-dir is required for a new run (a FLAME folder, or make one with "
                             "omnifast make-flame DIR)")
        config = config_from(args, device)
    metrics = train(config, args.out, resume=args.resume, steps=args.steps, progress=not args.no_progress)
    print(format_metrics(metrics))
    return 0


def evaluate_run(run_dir, device, meshes, points, json_path=None):
    """Evaluate a run on held-out parameters; print the table and write it as JSON."""
    from ..runs import atomic_write, check_memory, check_output
    from .evaluate import evaluate, format_metrics, held_out_params
    from .train import load_run

    json_path = json_path or os.path.join(run_dir, "eval.json")
    check_output(json_path, "--json", (".json",))
    run = load_run(run_dir, device)
    # The parameters of every mesh and each mesh's per-point errors are held until the end.
    check_memory(meshes * (run.flame.layout.size * 8 + points * 48), f"--meshes {meshes} with --points {points}")
    metrics = evaluate(run, held_out_params(run, meshes), points)
    metrics["step"] = run.step
    print(format_metrics(metrics), flush=True)  # the table first: a failed write does not lose it
    text = json.dumps(metrics, indent=2)
    atomic_write(json_path, lambda f: f.write(text), binary=False)
    print(f"wrote {json_path}")
    return run, metrics


def eval_sdf(args):
    evaluate_run(args.run, device_of(args.device), args.meshes, args.points, args.json)
    return 0


def export_sdf(args):
    from ..runs import check_memory, check_output
    from .export import check_grid_memory, extract_mesh, parse_params, write_ply, write_previews
    from .train import load_run

    check_output(args.out, "--out", (".ply",))
    if args.previews:
        check_output(args.previews, "--previews", (".png",))
    check_grid_memory(args.resolution, "--resolution")
    if args.previews:  # rendered by sphere tracing: a few KiB per pixel while it runs
        check_memory(args.preview_size ** 2 * 4096, f"--preview-size {args.preview_size}")
    run = load_run(args.run, device_of(args.device))
    params = parse_params(run.flame.layout, args.params)
    verts, faces = extract_mesh(run.model, run.flame, params, args.resolution)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_ply(args.out, verts, faces)
    print(f"wrote {args.out} ({verts.shape[0]} vertices, {faces.shape[0]} faces)")
    if args.previews:
        print(f"wrote {write_previews(run.model, run.flame, args.previews, size=args.preview_size)}")
    return 0
