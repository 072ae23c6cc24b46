"""``omnifast demo``: the whole system on a fresh machine with no files from the user. A synthetic
FLAME-format model; stage I (the semantic SDF) trained, evaluated on held-out FLAME parameters and
exported; a synthetic dataset; a short stage II run (OmniAvatar's generator); generation with
expression, jaw and camera sweeps (PNG and MP4) and a mesh; the control evaluation against the
FLAME mesh; and the kernels' benchmark table. Every stage runs a fixed number of steps, so the
result does not depend on how fast the machine is (a slower machine takes longer). ``demo.json``
collects what was measured and ``index.html`` shows it in one page."""
import csv
import html
import json
import os
import shutil
import time

# What the demo runs, by device type. The CPU column fits 15 minutes on a 2-core machine: stage I
# about 4 minutes, the dataset 1, stage II 5.5 (its 500 iterations: at 250 the heads had no hair yet).
DEMO = {
    "cpu": dict(sdf_steps=600, sizes=64, images=512, image_resolution=64, gan_preset="tiny", gan_steps=500,
                seeds="0-3", frames=8, mesh_resolution=64, eval_samples=4, quality_images=32),
    "cuda": dict(sdf_steps=6000, sizes=192, images=4000, image_resolution=128, gan_preset="64", gan_steps=2000,
                 seeds="0-7", frames=24, mesh_resolution=128, eval_samples=16, quality_images=256),
}
# What to expect, printed at the start (the CPU's from runs of the default settings).
EXPECTED = {"cpu": "about 11 minutes on 2 CPU cores (longer on a slower machine: every stage runs a fixed "
                   "number of steps)",
            "cuda": "about an hour on an H200, projected from cut-down runs there (stage I 0.08 s a step, "
                    "16 dataset images a second, stage II 1.3 s an iteration)"}
SWEEPS = ("expression", "jaw", "yaw")  # what the demo's videos move, the identity fixed
DEMO_FILES = {"flame", "sdf-run", "data", "gan-run", "generated", "dataset.png", "sdf_head.ply", "sdf_previews.png",
              "demo.json", "index.html", "bench.json"}  # what a demo folder holds
STAGES = 8


def add_parsers(sub):
    from .gan.train import PRESETS
    from .sdf.commands import add_export_arguments, add_train_arguments, at_least

    demo = sub.add_parser("demo", help="the whole system on a fresh machine: stage I, a dataset, stage II, "
                          "generation, the control evaluation and the kernel benchmarks")
    demo.add_argument("--out", default="omnifast-demo", help="folder for everything the demo writes")
    demo.add_argument("--flame-dir", help="a real FLAME folder to use instead of the synthetic model")
    demo.add_argument("--bench", choices=["first", "full", "quick", "none"], default="first",
                      help="kernel benchmark table at the end: the first (smallest real) case of each "
                           "op (default), every case, the harness-check sizes, or none")
    demo.add_argument("--eval-meshes", type=at_least(1), default=16, help="stage I: held-out parameter vectors")
    demo.add_argument("--images", type=at_least(1), help="dataset images (default 512 on a CPU, 4000 on CUDA)")
    demo.add_argument("--image-resolution", type=at_least(8), help="dataset pixels per side (64 CPU, 128 CUDA)")
    demo.add_argument("--gan-steps", type=at_least(1), help="stage II iterations (default 500 CPU, 2000 CUDA)")
    demo.add_argument("--gan-preset", choices=list(PRESETS), help="stage II preset (tiny CPU, 64 CUDA)")
    demo.add_argument("--gan-config", help="a JSON file of stage II settings (a train-gan config.json's format)")
    demo.add_argument("--seeds", help="generation: seeds of the grids and videos (default 0-3 CPU, 0-7 CUDA)")
    demo.add_argument("--frames", type=at_least(2), help="generation: frames of each sweep (8 CPU, 24 CUDA)")
    demo.add_argument("--eval-samples", type=at_least(1), help="control evaluation: samples (4 CPU, 16 CUDA)")
    demo.add_argument("--quality-images", type=at_least(0), help="control evaluation: images for the quality "
                      "proxy (32 CPU, 256 CUDA; 0: skip)")
    demo.add_argument("--inception", help="the Inception network's file for FID and KID (not downloaded)")
    add_export_arguments(demo)
    demo.set_defaults(resolution=None, preview_size=None)  # the demo's own sizes (DEMO)
    add_train_arguments(demo)
    return {"demo": demo_command}


def demo_command(args):
    run_demo(args)
    return 0


def run_demo(args):
    """Run every stage with the settings in ``args`` (the demo's parsed flags); returns the summary
    written to ``demo.json``."""
    from .data import make_dataset
    from .flame import make_synthetic_flame
    from .gan.commands import check_video_writer, write_generation
    from .gan.evaluate import evaluate_gan
    from .gan.generate import HeadGenerator, parse_seeds
    from .gan.train import PRESETS, GANConfig, train_gan
    from .runs import RunError, check_output, read_settings
    from .sdf.commands import config_from, device_of, evaluate_run
    from .sdf.export import extract_mesh, parse_params, write_ply, write_previews
    from .sdf.train import train

    start = time.perf_counter()
    device = device_of(args.device)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    plan = {key: (getattr(args, key, None) if getattr(args, key, None) is not None else value)
            for key, value in DEMO[kind].items()}
    out = args.out
    check_output(out, "--out", what="folder")
    # Everything the user gave is checked before the first stage, and the demo writes only into
    # a new or empty folder or one of its own earlier runs (it replaces what it wrote there).
    held = sorted(os.listdir(out)) if os.path.isdir(out) else []
    foreign = [name for name in held if name not in DEMO_FILES]
    if foreign:
        raise RunError(f"--out {out} is not empty and not a demo folder (it holds {foreign[0]!r}): give a new "
                       "or empty folder")
    settings = read_settings(args.gan_config) if args.gan_config else {}
    # The synthetic data's backgrounds are random gradients: G gets OmniAvatar's background network
    # for them (as the tiny presets do; the others are EG3D's FFHQ recipe) unless the user's settings
    # name the generator's.
    settings.setdefault("generator", {**PRESETS[plan["gan_preset"]].get("generator", {}), "background": True})
    GANConfig.with_preset(plan["gan_preset"], f"--gan-config {args.gan_config}" if args.gan_config else "settings",
                          **{**settings, "dataset": "-", "sdf_run": "-"})  # its errors now
    seeds = parse_seeds(plan["seeds"])
    check_video_writer(os.path.join(out, "generated", f"{SWEEPS[0]}.mp4"), "the demo's sweep videos")
    if plan["quality_images"] == 1:
        raise ValueError("--quality-images 1: a Frechet distance needs the covariance of at least 2 images; "
                         "pass 2 or more, or 0 to skip it")
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in ("sdf-run", "data", "gan-run", "generated")}
    stages = {}
    print(f"omnifast demo on {device}: {EXPECTED[kind]}", flush=True)

    def stage(number, text):
        stages[number] = time.perf_counter()
        print(f"== {number}/{STAGES} {text} ({time.perf_counter() - start:.0f} s so far)", flush=True)

    # 1. FLAME
    if args.flame_dir:
        stage(1, f"FLAME model from {args.flame_dir}")
    else:
        args.flame_dir = os.path.join(out, "flame")
        stage(1, f"synthetic FLAME model -> {args.flame_dir}")
        make_synthetic_flame(args.flame_dir)

    # 2-3. Stage I: the semantic SDF
    config = config_from(args, device)
    config.steps = args.steps or plan["sdf_steps"]
    size = args.resolution or plan["sizes"]
    config.eval_every = max(config.eval_every, config.steps // 4)
    config.checkpoint_every = max(config.checkpoint_every, config.steps // 8)
    stage(2, f"stage I: train the semantic SDF for {config.steps} steps -> {paths['sdf-run']} "
             f"({config.network.hidden} x {config.network.layers} network, {config.batch} meshes x "
             f"{config.surface_points} + {config.space_points} points per step)")
    _fresh(paths["sdf-run"])
    train_start = time.perf_counter()
    train(config, paths["sdf-run"], progress=not args.no_progress)
    sdf_seconds = time.perf_counter() - train_start
    print(f"   {config.steps} steps in {sdf_seconds:.0f} s ({sdf_seconds / config.steps:.2f} s a step)")
    stage(3, "stage I: evaluate on held-out parameters, export the zero level set and previews")
    run, metrics = evaluate_run(paths["sdf-run"], device, args.eval_meshes, 4096)
    mesh_path, preview_path = os.path.join(out, "sdf_head.ply"), os.path.join(out, "sdf_previews.png")
    verts, faces = extract_mesh(run.model, run.flame, parse_params(run.flame.layout, []), size)
    write_ply(mesh_path, verts, faces)
    write_previews(run.model, run.flame, preview_path, size=args.preview_size or plan["sizes"])
    print(f"   wrote {mesh_path} ({verts.shape[0]} vertices) and {preview_path}")
    targets = {"near_mean_pct": 1.0, "correspondence_mean_pct": 2.0}
    sdf_passed = all(metrics[key] < bound for key, bound in targets.items())
    stage_one = {"steps": config.steps, "train_seconds": sdf_seconds, "seconds_per_step": sdf_seconds / config.steps,
                 "metrics": metrics, "targets": targets, "passed": sdf_passed, "config": config.to_dict()}

    # 4. The dataset
    stage(4, f"synthetic dataset: {plan['images']} images at {plan['image_resolution']}^2 -> {paths['data']}")
    _fresh(paths["data"])
    dataset = make_dataset(paths["data"], args.flame_dir, plan["images"], plan["image_resolution"],
                           n_shape=config.n_shape, n_expr=config.n_expr, seed=config.seed, device=device,
                           progress=not args.no_progress)
    _dataset_sheet(paths["data"], os.path.join(out, "dataset.png"))
    dataset["path"] = os.path.relpath(dataset["path"], out)

    # 5. Stage II
    gan_config = GANConfig.with_preset(plan["gan_preset"], **{
        "image_every": max(1, plan["gan_steps"] // 2), "checkpoint_every": max(1, plan["gan_steps"] // 2),
        **settings, "dataset": paths["data"], "sdf_run": paths["sdf-run"], "steps": plan["gan_steps"],
        "device": device})
    stage(5, f"stage II: train the generator for {gan_config.steps} iterations (preset {plan['gan_preset']}, "
             f"batch {gan_config.batch}, neural rendering {gan_config.nrr_initial}^2) -> {paths['gan-run']}")
    _fresh(paths["gan-run"])
    train_start = time.perf_counter()
    losses = train_gan(gan_config, paths["gan-run"], progress=not args.no_progress)
    gan_seconds = time.perf_counter() - train_start
    print(f"   {gan_config.steps} iterations in {gan_seconds:.0f} s ({gan_seconds / gan_config.steps:.2f} s each)")
    # Whether it learnt: G_ema's weight-free Frechet distance to the data, at the start and the end.
    with open(os.path.join(paths["gan-run"], "train_log.csv")) as f:
        logged = [(int(row["step"]), float(row["fd_random"])) for row in csv.DictReader(f) if row["fd_random"]]
    fd = {"start": logged[0][1], "end": logged[-1][1], "end_over_start": logged[-1][1] / logged[0][1],
          "by_step": dict(logged)}
    print(f"   fd_random of G_ema's images to the data: {fd['start']:.2f} at the start, {fd['end']:.2f} at the end "
          f"({fd['end_over_start']:.2f} of it)")
    stage_two = {"preset": plan["gan_preset"], "steps": gan_config.steps, "batch": gan_config.batch,
                 "train_seconds": gan_seconds, "seconds_per_iteration": gan_seconds / gan_config.steps,
                 "fd_random": fd, "last_losses": losses, "config": gan_config.to_dict()}

    # 6. Generation
    stage(6, f"generation: seeds {plan['seeds']}, sweeps of {', '.join(SWEEPS)} ({plan['frames']} frames) -> "
             f"{paths['generated']}")
    os.makedirs(paths["generated"], exist_ok=True)
    generator = HeadGenerator(paths["gan-run"], device)
    base = parse_params(generator.layout, [])
    generated = os.path.join(paths["generated"], "{}")
    written, _ = write_generation(generator, seeds, base, generated.format("front.png"), extras=True,
                                  mesh=generated.format("head.ply"), mesh_resolution=plan["mesh_resolution"])
    for sweep in SWEEPS:
        written += write_generation(generator, seeds, base, generated.format(f"{sweep}.png"), sweep=sweep,
                                    frames=plan["frames"], video=generated.format(f"{sweep}.mp4"))[0]
    print(f"   wrote {len(written)} files")

    # 7. Control evaluation
    stage(7, f"control evaluation against the FLAME mesh ({plan['eval_samples']} samples)")
    control = evaluate_gan(paths["gan-run"], plan["eval_samples"], device, seed=0,
                           mesh_resolution=plan["mesh_resolution"], log=lambda text: None,
                           quality_images=plan["quality_images"], inception=args.inception)
    print(control_table(control))

    # 8. Benchmarks
    bench_report = None
    if args.bench != "none":
        from .bench.commands import run_benchmarks

        stage(8, f"kernel benchmarks ({args.bench} cases)")
        first = args.bench == "first"  # the smallest real case of each op, timed 3 times
        bench_report = run_benchmarks("kernels", kind, quick=args.bench == "quick", cases=1 if first else None,
                                      runs=3 if first else None, subset=500 if first else 2000,
                                      json_path=os.path.join(out, "bench.json"))
    total = time.perf_counter() - start
    summary = {"device": device, "total_seconds": total, "stage_seconds": _durations(stages, time.perf_counter()),
               "stage_one": stage_one, "dataset": dataset, "stage_two": stage_two,
               "generated": [os.path.relpath(p, out) for p in written], "control": control,
               "bench": _bench_rows(bench_report), "not_measured": (bench_report or {}).get("not_measured", {})}
    from .runs import atomic_write

    text = json.dumps(summary, indent=2)
    atomic_write(os.path.join(out, "demo.json"), lambda f: f.write(text), binary=False)
    page = index_html(summary, out)
    atomic_write(os.path.join(out, "index.html"), lambda f: f.write(page), binary=False)
    geometry = control["geometry"]
    print(f"demo finished in {total:.0f} s: stage I near-surface |s - s*| {metrics['near_mean_pct']:.2f}% and "
          f"surface correspondence {metrics['correspondence_mean_pct']:.2f}% of the head's bounding-box diagonal "
          f"(targets: under 1% and 2%: {'met' if sdf_passed else 'NOT met'}); stage II face depth within "
          f"{geometry['depth_mm']['mean']:.1f} mm of the FLAME mesh on average; open {os.path.join(out, 'index.html')}")
    return summary


def _fresh(path):
    if os.path.isdir(path):
        shutil.rmtree(path)


def _dataset_sheet(data, path, count=16):
    """The dataset's first ``count`` images in two rows."""
    import numpy as np

    from .data import ImageDataset
    from .gan.generate import grid
    from .gan.train import write_png

    dataset = ImageDataset(data)
    count = min(count, len(dataset))
    cells = np.stack([dataset[i][0].permute(1, 2, 0).numpy() for i in range(count)])
    write_png(path, grid(cells, 2 if count % 2 == 0 else 1))


def _durations(stages, end):
    marks = sorted(stages.items())
    return {str(n): (marks[i + 1][1] if i + 1 < len(marks) else end) - t for i, (n, t) in enumerate(marks)}


STAGE_ONE_ROWS = (("near_mean", "near-surface |s - s*| mean"), ("near_p95", "near-surface |s - s*| 95th percentile"),
                  ("correspondence_mean", "surface correspondence mean"),
                  ("correspondence_p95", "surface correspondence 95th percentile"),
                  ("surface_sdf_mean", "surface |s| mean"))
CONTROL_ROWS = (  # (group, key, what it measures)
    ("geometry", "depth_mm", "face depth vs the posed FLAME mesh's depth, same camera (mm)"),
    ("geometry", "surface_mm", "generated surface (s + delta s) to the FLAME mesh (mm)"),
    ("control", "expression_mm", "expression changed: depth change vs FLAME's depth change (mm)"),
    ("control", "jaw_mm", "jaw opened 0.2 rad: depth change vs FLAME's depth change (mm)"),
    ("control", "identity_pixel_change", "jaw opened: mean pixel change above the brows (0-255)"),
)


def _control_rows(control):
    """The control evaluation as ``(measure, mean, p95)`` text rows, the image quality last."""
    rows = [(text, f"{control[g][k]['mean']:.2f}", f"{control[g][k]['p95']:.2f}") for g, k, text in CONTROL_ROWS]
    quality = control.get("quality", {})
    return rows + [(f"{k} over {quality['images']} images", f"{v:.3f}", "")
                   for k, v in quality.items() if k != "images"]


def control_table(control):
    """The control evaluation as aligned text lines."""
    return "\n".join(f"{a:<64} {b:>8} {c:>8}" for a, b, c in [("measure", "mean", "p95"), *_control_rows(control)])


def _bench_rows(report):
    """Each benchmark row as {op, case, pass, omnifast_ms, reference_ms, speedup, peak MiB}; the
    closest-point rows (one per contender) pair omnifast with the brute-force search."""
    rows, results = [], (report or {}).get("results", [])
    mib = lambda row, key: row.get(key, 0) / 2 ** 20  # noqa: E731
    for row in results:
        if "omnifast_ms" in row and "reference_ms" in row:
            rows.append({"op": row["op"], "case": row["case"], "pass": row.get("pass", ""),
                         "omnifast_ms": row["omnifast_ms"], "reference_ms": row["reference_ms"],
                         "omnifast_peak_mib": mib(row, "omnifast_peak_bytes"),
                         "reference_peak_mib": mib(row, "reference_peak_bytes")})
        elif row.get("impl") == "omnifast":
            brute = next((r for r in results if r["case"] == row["case"] and r.get("impl") == "brute force (torch)"),
                         None)
            if brute is not None:
                rows.append({"op": row["op"], "case": row["case"], "pass": "query (tree build included)",
                             "omnifast_ms": row["ms"], "reference_ms": brute["ms"],
                             "omnifast_peak_mib": mib(row, "peak_bytes"),
                             "reference_peak_mib": mib(brute, "peak_bytes")})
    for row in rows:
        row["speedup"] = row["reference_ms"] / row["omnifast_ms"]
    return rows


def _table(header, rows):
    cells = lambda tag, row: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)  # noqa: E731
    return (f"<table><tr>{cells('th', header)}</tr>"
            + "".join(f"<tr>{cells('td', row)}</tr>" for row in rows) + "</table>")


def index_html(summary, out):
    """One page showing the demo's images, videos and tables (paths relative to ``out``); small
    images are shown enlarged (nearest neighbour), up to the page's width."""
    from PIL import Image

    def shown_width(natural):
        return min(2 * natural if natural < 600 else natural, 1150)

    def image(name, caption):
        path = os.path.join(out, name)
        if not os.path.isfile(path):
            return ""
        with Image.open(path) as opened:
            width = shown_width(opened.size[0])
        return (f'<figure><img src="{html.escape(name)}" width="{width}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def video(name, caption, natural_width):
        return (f'<figure><video src="{html.escape(name)}" width="{shown_width(natural_width)}" controls autoplay '
                f"loop muted></video><figcaption>{html.escape(caption)}</figcaption></figure>")

    one, two, control = summary["stage_one"], summary["stage_two"], summary["control"]
    names = {"1": "FLAME model", "2": "stage I training", "3": "stage I evaluation and export",
             "4": "dataset", "5": "stage II training", "6": "generation", "7": "control evaluation",
             "8": "benchmarks"}
    stage_rows = [(n, names.get(n, n), f"{s:.0f}") for n, s in summary["stage_seconds"].items()]
    m = one["metrics"]
    metric_rows = [(text, f"{m[key] * 1000:.2f}", f"{m[key + '_pct']:.2f}%") for key, text in STAGE_ONE_ROWS]
    metric_rows.append(("eikonal residual mean", "", f"{m['eikonal_residual']:.3f}"))
    images = os.path.join(out, "gan-run", "images")
    grids = sorted(os.listdir(images)) if os.path.isdir(images) else []
    front = os.path.join(out, "generated", "front.png")
    with Image.open(front) as opened:
        video_width = opened.size[1]  # a column of square cells, one per seed: the video puts them side by side
    sweeps = "".join(image(f"generated/{s}.png", f"{s} sweep: a row per seed, a column per frame")
                     + video(f"generated/{s}.mp4", f"{s} sweep (the seeds side by side)", video_width) for s in SWEEPS)
    bench_rows = [(r["op"], r["case"], r["pass"], f"{r['omnifast_ms']:.2f}", f"{r['reference_ms']:.2f}",
                   f"{r['speedup']:.2f}x", f"{r['omnifast_peak_mib']:.1f}", f"{r['reference_peak_mib']:.1f}")
                  for r in summary["bench"]]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>omnifast demo</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}} img,video{{image-rendering:pixelated;
max-width:100%}} figure{{display:inline-block;margin:0.5em;vertical-align:top}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head>
<body><h1>omnifast demo</h1>
<p>Device {html.escape(summary['device'])}; {summary['total_seconds'] / 60:.1f} minutes in all. Every number is in
demo.json.</p>
{_table(("stage", "what", "seconds"), stage_rows)}
<h2>Stage I: the semantic SDF ({one['steps']} steps, {one['seconds_per_step']:.2f} s a step)</h2>
<p>Targets: near-surface error under 1% and correspondence under 2% of the head's diagonal:
{'met' if one['passed'] else 'not met'}.</p>
{image('sdf_previews.png', 'the semantic SDF: previews')}
{_table(('measure', 'mm', '% of the diagonal'), metric_rows)}
<h2>Dataset ({summary['dataset']['count']} images)</h2>
{image('dataset.png', 'the first images of the synthetic dataset')}
<h2>Stage II: the generator ({two['steps']} iterations, preset {html.escape(two['preset'])},
{two['seconds_per_iteration']:.2f} s each)</h2>
<p>The weight-free Frechet distance (fd_random) of G_ema's images to the data:
{two['fd_random']['start']:.2f} at the start, {two['fd_random']['end']:.2f} at the end
({two['fd_random']['end_over_start']:.2f} of it).</p>
{''.join(image(f'gan-run/images/{g}', f'G_ema at {g[4:-4].lstrip("0") or "0"}: the image above the raw neural image')
         for g in grids)}
<h2>Generation</h2>
{image('generated/front.png', 'a row per seed: the final image')}
{image('generated/front_raw.png', 'the raw neural image')}
{image('generated/front_depth.png', 'depth')}
{image('generated/front_normals.png', 'normals')}
{sweeps}
<p>Meshes: generated/head.ply (observation space), generated/head_canonical.ply (canonical space),
sdf_head.ply (stage I).</p>
<h2>Control evaluation ({control['samples']} samples)</h2>
{_table(('measure', 'mean', 'p95'), _control_rows(control))}
<h2>Benchmarks (omnifast vs the PyTorch reference, same run)</h2>
{_table(('op', 'case', 'pass', 'omnifast ms', 'reference ms', 'speedup', 'peak MiB', 'ref peak MiB'), bench_rows)
 if bench_rows else '<p>not run</p>'}
</body></html>
"""
