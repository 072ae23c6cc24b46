"""``omnifast demo``: the whole system on a fresh machine with no files from the user. A synthetic
FLAME-format model, a semantic SDF trained for a fixed number of steps (so the result does not
depend on how fast the machine is; a slower machine takes longer), its evaluation on held-out
FLAME parameters, a mesh and preview images, and the kernels' benchmark table; ``demo.json``
collects what it measured."""
import json
import os
import shutil
import time

# Training steps by device type, with the device's preset network and batch (omnifast.sdf.commands
# PRESETS). On the CPU: 0.13 to 0.5 s a step on 2 cores, so 2 to 7 minutes of training.
DEMO_STEPS = {"cpu": 800, "cuda": 6000}
# Mesh and preview sizes by device type (the previews' normals take a backward pass per pixel).
DEMO_SIZES = {"cpu": 96, "cuda": 192}


def add_parsers(sub):
    from .sdf.commands import add_export_arguments, add_train_arguments, at_least

    demo = sub.add_parser("demo", help="the whole stage I on a fresh machine, then the kernel benchmarks")
    demo.add_argument("--out", default="omnifast-demo", help="folder for the model, run and previews")
    demo.add_argument("--flame-dir", help="a real FLAME folder to use instead of the synthetic model")
    demo.add_argument("--bench", choices=["first", "full", "quick", "none"], default="first",
                      help="kernel benchmark table at the end: the first (smallest real) case of each "
                           "op (default), every case, the harness-check sizes, or none")
    demo.add_argument("--eval-meshes", type=at_least(1), default=16, help="held-out parameter vectors")
    add_export_arguments(demo)
    demo.set_defaults(resolution=None, preview_size=None)  # the demo's own sizes (DEMO_SIZES)
    add_train_arguments(demo)
    return {"demo": demo_command}


def demo_command(args):
    run_demo(args)
    return 0


def run_demo(args):
    """Run every stage with the settings in ``args`` (the demo's parsed flags); returns the summary
    written to ``demo.json``."""
    from .flame import make_synthetic_flame
    from .sdf.commands import config_from, device_of, evaluate_run
    from .sdf.export import extract_mesh, parse_params, write_ply, write_previews
    from .sdf.train import train

    start = time.perf_counter()
    device = device_of(args.device)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    os.makedirs(args.out, exist_ok=True)
    run_dir = os.path.join(args.out, "run")
    stages = {}

    def stage(number, text):
        stages[number] = time.perf_counter()
        print(f"== {number}/5 {text} ({time.perf_counter() - start:.0f} s so far)", flush=True)

    if args.flame_dir:
        stage(1, f"FLAME model from {args.flame_dir}")
    else:
        args.flame_dir = os.path.join(args.out, "flame")
        stage(1, f"synthetic FLAME model -> {args.flame_dir}")
        make_synthetic_flame(args.flame_dir)
    config = config_from(args, device)
    config.steps = args.steps or DEMO_STEPS[kind]
    resolution, preview_size = args.resolution or DEMO_SIZES[kind], args.preview_size or DEMO_SIZES[kind]
    config.eval_every = max(config.eval_every, config.steps // 4)
    config.checkpoint_every = max(config.checkpoint_every, config.steps // 8)
    stage(2, f"train the semantic SDF for {config.steps} steps -> {run_dir} ({config.network.hidden} x "
             f"{config.network.layers} network, {config.batch} meshes x {config.surface_points} + "
             f"{config.space_points} points per step)")
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    train_start = time.perf_counter()
    train(config, run_dir, progress=not args.no_progress)
    train_seconds = time.perf_counter() - train_start
    print(f"   {config.steps} steps in {train_seconds:.0f} s ({config.steps / train_seconds:.2f} steps/s)")
    stage(3, "evaluate on held-out parameters")
    run, metrics = evaluate_run(run_dir, device, args.eval_meshes, 4096)
    stage(4, "export the zero level set and previews")
    mesh_path, preview_path = os.path.join(args.out, "head.ply"), os.path.join(args.out, "previews.png")
    verts, faces = extract_mesh(run.model, run.flame, parse_params(run.flame.layout, []), resolution)
    write_ply(mesh_path, verts, faces)
    write_previews(run.model, run.flame, preview_path, size=preview_size)
    print(f"   wrote {mesh_path} ({verts.shape[0]} vertices) and {preview_path}")
    bench_report = None
    if args.bench != "none":
        from .bench.commands import run_benchmarks

        stage(5, f"kernel benchmarks ({args.bench} cases)")
        first = args.bench == "first"  # the smallest real case of each op, timed 3 times
        bench_report = run_benchmarks("kernels", kind, quick=args.bench == "quick", cases=1 if first else None,
                                      runs=3 if first else None, subset=500 if first else 2000,
                                      json_path=os.path.join(args.out, "bench.json"))
    total = time.perf_counter() - start
    passed = metrics["near_mean_pct"] < 1.0 and metrics["correspondence_mean_pct"] < 2.0
    summary = {"device": device, "steps": config.steps, "train_seconds": train_seconds,
               "seconds_per_step": train_seconds / config.steps, "total_seconds": total,
               "stage_seconds": _durations(stages, time.perf_counter()), "metrics": metrics,
               "targets": {"near_mean_pct": 1.0, "correspondence_mean_pct": 2.0}, "passed": passed,
               "not_measured": (bench_report or {}).get("not_measured", {}), "config": config.to_dict()}
    from .runs import atomic_write

    text = json.dumps(summary, indent=2)
    atomic_write(os.path.join(args.out, "demo.json"), lambda f: f.write(text), binary=False)
    print(f"demo finished in {total:.0f} s: near-surface |s - s*| {metrics['near_mean_pct']:.2f}% and "
          f"surface correspondence {metrics['correspondence_mean_pct']:.2f}% of the head's bounding-box "
          f"diagonal (targets: under 1% and 2%: {'met' if passed else 'NOT met'})")
    return summary


def _durations(stages, end):
    marks = sorted(stages.items())
    return {str(n): (marks[i + 1][1] if i + 1 < len(marks) else end) - t for i, (n, t) in enumerate(marks)}
