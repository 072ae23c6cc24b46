"""The semantic-SDF commands: ``make-flame``, ``train-sdf``, ``eval-sdf``, ``export-sdf`` and
``demo``."""
import json
import os
import time

import torch

PRESETS = {  # per device type: network, meshes per step, samples per mesh
    "cpu": dict(network="small", batch=4, surface_points=1024, space_points=2048),
    "cuda": dict(network="full", batch=16, surface_points=4096, space_points=8192),
}


def _device(name):
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _config(args, device):
    """The device's preset, then a ``--config`` file (a run's ``config.json`` format: every
    setting, the parameter distribution and loss weights included), then the flags."""
    from .network import NetworkConfig
    from .train import TrainConfig

    preset = dict(PRESETS["cuda" if device.startswith("cuda") else "cpu"])
    network = NetworkConfig.preset(preset.pop("network"))
    config = TrainConfig(flame_dir=args.flame_dir, network=network, device=device, **preset)
    if args.config:
        with open(args.config) as f:
            config = TrainConfig.from_dict({**config.to_dict(), **json.load(f)})
    for key in ("flame_dir", "n_shape", "n_expr", "batch", "surface_points", "space_points", "steps", "lr",
                "eval_every", "checkpoint_every", "seed"):
        if getattr(args, key, None) is not None:
            setattr(config, key, getattr(args, key))
    if args.network:
        config.network = NetworkConfig.preset(args.network)
    config.device = device
    return config


def add_train_arguments(parser):
    parser.add_argument("--config", help="a JSON file of training settings (the format of a run's config.json)")
    parser.add_argument("--n-shape", type=int, help="FLAME shape coefficients used (default 100)")
    parser.add_argument("--n-expr", type=int, help="FLAME expression coefficients used (default 50)")
    parser.add_argument("--steps", type=int, help="training steps (default 2000)")
    parser.add_argument("--batch", type=int, help="meshes per step (default 4 on CPU, 16 on CUDA)")
    parser.add_argument("--surface-points", type=int, help="surface samples per mesh")
    parser.add_argument("--space-points", type=int, help="off-surface samples per mesh")
    parser.add_argument("--network", choices=["small", "full"],
                        help="network size (default small on CPU, full on CUDA)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (default 500)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 250)")
    parser.add_argument("--seed", type=int, help="seed of the weights and the data stream (default 0)")
    parser.add_argument("--device", help="cpu or cuda[:i] (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_export_arguments(parser):
    parser.add_argument("--resolution", type=int, default=128, help="marching-cubes grid size")
    parser.add_argument("--preview-size", type=int, default=128, help="pixels per preview image")


def add_parsers(sub):
    make = sub.add_parser("make-flame", help="write a synthetic FLAME-format model (FLAME itself is licensed)")
    make.add_argument("dir")
    make.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train-sdf", help="train a semantic SDF on a FLAME model")
    train.add_argument("--flame-dir", required=True, help="FLAME_NEUTRAL.pkl + flame_static_embedding.pkl")
    train.add_argument("--out", required=True, help="run folder (config, checkpoint, CSV logs)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add_train_arguments(train)

    evaluate = sub.add_parser("eval-sdf", help="evaluate a trained semantic SDF on held-out parameters")
    evaluate.add_argument("run")
    evaluate.add_argument("--meshes", type=int, default=16, help="held-out parameter vectors")
    evaluate.add_argument("--points", type=int, default=4096, help="query points per mesh")
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

    demo = sub.add_parser("demo", help="the whole stage I on a fresh machine, then the kernel benchmarks")
    demo.add_argument("--out", default="omnifast-demo", help="folder for the model, run and previews")
    demo.add_argument("--flame-dir", help="a real FLAME folder to use instead of the synthetic model")
    demo.add_argument("--minutes", type=float, help="training time budget (default 4 on CPU, 10 on CUDA)")
    demo.add_argument("--bench", choices=["first", "full", "quick", "none"], default="first",
                      help="kernel benchmark table at the end: the first (smallest real) case of each "
                           "op (default), every case, the harness-check sizes, or none")
    demo.add_argument("--eval-meshes", type=int, default=16, help="held-out parameter vectors")
    add_export_arguments(demo)
    add_train_arguments(demo)
    return {"make-flame": make_flame, "train-sdf": train_sdf, "eval-sdf": eval_sdf,
            "export-sdf": export_sdf, "demo": demo_command}


def make_flame(args):
    from ..flame import make_synthetic_flame

    for path in make_synthetic_flame(args.dir, seed=args.seed):
        print(f"wrote {path}")
    return 0


def train_sdf(args):
    from .train import train

    config = None if args.resume else _config(args, _device(args.device))
    metrics = train(config, args.out, resume=args.resume, steps=args.steps, progress=not args.no_progress)
    from .evaluate import format_metrics

    print(format_metrics(metrics))
    return 0


def _evaluate_run(run_dir, device, meshes, points, json_path=None):
    from .evaluate import evaluate, format_metrics, held_out_params
    from .train import load_run

    run = load_run(run_dir, device)
    metrics = evaluate(run, held_out_params(run, meshes), points)
    metrics["step"] = run.step
    print(format_metrics(metrics))
    json_path = json_path or os.path.join(run_dir, "eval.json")
    with open(json_path, "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"wrote {json_path}")
    return run, metrics


def eval_sdf(args):
    _evaluate_run(args.run, _device(args.device), args.meshes, args.points, args.json)
    return 0


def export_sdf(args):
    from .export import extract_mesh, parse_params, write_ply, write_previews
    from .train import load_run

    run = load_run(args.run, _device(args.device))
    params = parse_params(run.flame.layout, args.params)
    verts, faces = extract_mesh(run.model, run.flame, params, args.resolution)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_ply(args.out, verts, faces)
    print(f"wrote {args.out} ({verts.shape[0]} vertices, {faces.shape[0]} faces)")
    if args.previews:
        print(f"wrote {write_previews(run.model, run.flame, args.previews, size=args.preview_size)}")
    return 0


def demo_command(args):
    """Synthetic FLAME -> semantic SDF trained for a time budget -> evaluation -> mesh and
    previews -> the kernels' benchmark table."""
    from ..flame import make_synthetic_flame
    from .export import extract_mesh, parse_params, write_ply, write_previews
    from .train import seconds_per_step, train

    start = time.perf_counter()
    device = _device(args.device)
    run_dir = os.path.join(args.out, "run")
    if args.flame_dir:
        print(f"== 1. FLAME model from {args.flame_dir}")
    else:
        args.flame_dir = os.path.join(args.out, "flame")
        print(f"== 1. synthetic FLAME model -> {args.flame_dir}")
        make_synthetic_flame(args.flame_dir)
    config = _config(args, device)
    if args.steps is None:  # a time budget, turned into a fixed number of steps
        minutes = args.minutes if args.minutes is not None else (10.0 if device.startswith("cuda") else 4.0)
        per_step = seconds_per_step(config)
        config.steps = max(100, int(minutes * 60 / per_step))
        print(f"   {per_step * 1e3:.0f} ms per step on {device}: {config.steps} steps in about {minutes:g} min")
    config.eval_every = max(config.eval_every, config.steps // 4)
    config.checkpoint_every = max(config.checkpoint_every, config.steps // 8)
    print(f"== 2. train the semantic SDF -> {run_dir} ({config.network.hidden} x {config.network.layers} "
          f"network, {config.batch} meshes x {config.surface_points} + {config.space_points} points per step)")
    if os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
        import shutil

        shutil.rmtree(run_dir)
    train_start = time.perf_counter()
    train(config, run_dir, progress=not args.no_progress)
    train_seconds = time.perf_counter() - train_start
    print(f"   {config.steps} steps in {train_seconds:.0f} s ({config.steps / train_seconds:.1f} steps/s)")
    print("== 3. evaluate on held-out parameters")
    run, metrics = _evaluate_run(run_dir, device, args.eval_meshes, 4096)
    print("== 4. export the zero level set and previews")
    mesh_path, preview_path = os.path.join(args.out, "head.ply"), os.path.join(args.out, "previews.png")
    verts, faces = extract_mesh(run.model, run.flame, parse_params(run.flame.layout, []), args.resolution)
    write_ply(mesh_path, verts, faces)
    preview_path = write_previews(run.model, run.flame, preview_path, size=args.preview_size)
    print(f"   wrote {mesh_path} ({verts.shape[0]} vertices) and {preview_path}")
    if args.bench != "none":
        print(f"== 5. kernel benchmarks ({args.bench} cases)")
        from ..cli import main as cli_main

        extra = {"first": ["--cases", "1"], "quick": ["--quick"], "full": []}[args.bench]
        cli_main(["bench", "--device", "cuda" if device.startswith("cuda") else "cpu",
                  "--json", os.path.join(args.out, "bench.json")] + extra)
    total = time.perf_counter() - start
    summary = {"device": device, "steps": config.steps, "train_seconds": train_seconds,
               "steps_per_second": config.steps / train_seconds, "total_seconds": total,
               "metrics": metrics, "config": config.to_dict()}
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"demo finished in {total:.0f} s: near-surface |s - s*| "
          f"{metrics['near_mean_pct']:.2f}% and surface correspondence {metrics['correspondence_mean_pct']:.2f}% "
          f"of the head's bounding-box diagonal (targets: under 1% and 2%)")
    return 0

