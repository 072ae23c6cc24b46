"""The ``omnifast bench`` command: each op's cases timed for omnifast, the PyTorch reference and
any peers installed, interleaved call by call, with peak memory; a table and a JSON report."""
import datetime
import json
import os
import platform
import sys

import torch

from ..runs import atomic_write, check_output


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} threads"


def _copy_bandwidth(device):
    """Device-to-device copy rate (read + write bytes per second), the practical HBM ceiling."""
    from .measure import time_call

    src = torch.empty(256 * 2 ** 20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, warmup=2, runs=10)
    return 2 * src.numel() * 4 / timing.median_s


def _bench_op(op, cases, runner, device, runs_each, passes, graph_keeper=None, peers=()):
    """Each case and pass: omnifast, the reference and any `peers` (names the runner knows) timed
    alternately, then peak memory; with a `graph_keeper(case, impl, device)` (a forward that keeps
    its autograd graph), also what the forward+backward pass holds between the two."""
    from .measure import measure_peak_bytes, measure_retained_bytes, time_calls

    rows = []
    for case in cases:
        for pass_name in passes:
            row = {"op": op, "case": case.name, "pass": pass_name,
                   "sizes": {k: v for k, v in vars(case).items() if k not in ("name", "note")},
                   "note": case.note}
            impls = ("omnifast", "reference", *peers)
            runs = [runner(case, impl, pass_name, device) for impl in impls]
            timings = time_calls(runs, device, warmup=1, runs=runs_each)
            if pass_name == "forward":  # everyone answers the same inputs: how close they agree
                row["max_abs_diff_vs_omnifast"] = dict(zip(impls[1:], _max_abs_diffs(runs)))
            for impl, run, timing in zip(impls, runs, timings):
                row[f"{impl}_ms"] = timing.median_s * 1e3
                row[f"{impl}_runs"] = timing.runs
                row[f"{impl}_peak_bytes"] = measure_peak_bytes(run, device)
            del runs
            if graph_keeper is not None and pass_name == "forward+backward":
                for impl in impls:  # held from forward to backward: the training memory
                    row[f"{impl}_retained_bytes"] = measure_retained_bytes(
                        graph_keeper(case, impl, device), device)
            row["speedup"] = row["reference_ms"] / row["omnifast_ms"]
            for peer in peers:
                row[f"{peer}_speedup"] = row[f"{peer}_ms"] / row["omnifast_ms"]
            if row["omnifast_peak_bytes"] and row["reference_peak_bytes"]:
                row["memory_ratio"] = row["omnifast_peak_bytes"] / row["reference_peak_bytes"]
            if pass_name == "forward" and hasattr(case, "bytes_floor"):
                row["omnifast_forward_GBps"] = case.bytes_floor() / (row["omnifast_ms"] / 1e3) / 1e9
            rows.append(row)
            print(_format_row(row, peers), flush=True)
    return rows


def _max_abs_diffs(runs):
    """Largest difference of each run's outputs from the first run's (NaN and inf where both
    agree count as equal)."""
    def flat(result):
        return [t.detach().double().reshape(-1) for t in
                (result if isinstance(result, (tuple, list)) else (result,))]

    ours = flat(runs[0]())
    diffs = []
    for run in runs[1:]:
        gaps = [torch.where((a == b) | (a.isnan() & b.isnan()), 0.0, (a - b).abs())
                for a, b in zip(ours, flat(run()))]
        diffs.append(max((float(g.max()) for g in gaps if g.numel()), default=0.0))
    return diffs


def _mib(value):
    return "n/a" if value is None else f"{value / 2 ** 20:.0f}"


def _format_row(row, peers=()):
    extra = f"  {row['omnifast_forward_GBps']:.0f} GB/s" if "omnifast_forward_GBps" in row else ""
    if "omnifast_retained_bytes" in row:
        extra += (f"  kept for backward: {_mib(row['omnifast_retained_bytes'])} vs "
                  f"{_mib(row['reference_retained_bytes'])} MiB")
    for peer in peers:
        kept = (f", kept {_mib(row[f'{peer}_retained_bytes'])} MiB"
                if f"{peer}_retained_bytes" in row else "")
        extra += (f"\n{'':<9} {'':<36} {peer:<24} {row[f'{peer}_ms']:>9.2f} ms, "
                  f"{row[f'{peer}_speedup']:.2f}x omnifast's time, peak "
                  f"{_mib(row[f'{peer}_peak_bytes'])} MiB{kept}")
    return (f"{row['op'][:9]:<9} {row['case'][:36]:<36} {row['pass']:<24} {row['omnifast_ms']:>9.2f} "
            f"{row['reference_ms']:>10.2f} {row['speedup']:>7.2f}x "
            f"{_mib(row['omnifast_peak_bytes']):>8} {_mib(row['reference_peak_bytes']):>8}{extra}")


def _bench_correspondence(device, quick, runs_each, max_cases=None, subset=2000):
    """Every contender on each case, timed in turn; a contender measured on a subset of the
    queries (brute force, trimesh) has its time scaled to the full case and says so."""
    from .correspondence import MeshIndex, correspondence_cases, correspondence_contenders, make_inputs
    from .measure import measure_peak_bytes, time_calls

    print(f"\n{'closest point':<22} {'contender':<26} {'ms':>9} {'Mqueries/s':>10} {'omnifast is':>12}")
    rows, missing_all = [], {}
    for case in correspondence_cases(device, quick)[:max_cases]:
        contenders, missing = correspondence_contenders(case, device, quick, subset)
        missing_all.update(missing)
        timings = time_calls([c.run for c in contenders], device, warmup=1, runs=min(3, runs_each),
                             max_seconds=120)
        verts, faces, _ = make_inputs(case, device)
        index = MeshIndex(faces)
        build = time_calls([lambda index=index, verts=verts: index.build(verts)], device, warmup=1,
                           runs=runs_each)[0]
        base_ms = timings[0].median_s * 1e3
        for contender, timing in zip(contenders, timings):
            ms = timing.median_s * 1e3 * contender.scale
            row = {"op": "closest_point", "case": case.name, "impl": contender.name,
                   "sizes": {"batch": case.batch, "points": case.points, "faces": int(faces.shape[0])},
                   "ms": ms, "runs": timing.runs, "queries_per_s": case.points / (ms / 1e3),
                   "omnifast_speedup": ms / base_ms, "measured_points": contender.measured,
                   "scaled_from_subset": contender.scale != 1.0, "note": contender.note}
            if contender.name.startswith("omnifast"):
                row["peak_bytes"] = measure_peak_bytes(contender.run, device)
                row["build_ms"] = build.median_s * 1e3
            rows.append(row)
            scaled = f" (from {contender.measured} queries)" if row["scaled_from_subset"] else ""
            print(f"{case.name[:22]:<22} {contender.name[:26]:<26} {ms:>9.1f} "
                  f"{row['queries_per_s'] / 1e6:>10.2f} {row['omnifast_speedup']:>11.1f}x{scaled}",
                  flush=True)
        print(f"{case.name[:22]:<22} {'omnifast tree build only':<26} {build.median_s * 1e3:>9.2f}")
    for name, why in missing_all.items():
        print(f"not measured: {name} ({why})")
    return rows, missing_all


OPS = ("triplane", "composite", "correspondence", "render", "train")


def run_benchmarks(op="all", device=None, *, quick=False, cases=None, passes=None, json_path=None, runs=None,
                   subset=2000, memory_budget=None, gan_run=None, cameras=16, resolution=256, samples=24,
                   image_path=None, sr_free_only=False):
    """Time omnifast against the PyTorch references (and any peers installed) and return the
    report; ``op``: one of OPS, "kernels" (every operator, no render) or "all"; ``cases``: only
    the first N (smallest) cases of each op ("train": one GAN iteration with full-size networks);
    ``passes``: a subset of the ops' passes; ``runs``: timed calls per contender (default 9, 3
    with ``quick``); ``subset``: queries the slow closest-point peers answer (times scaled);
    ``memory_budget``: bytes the render benchmark's largest resolution must fit (default: the
    GPU's memory, 16 GiB on the CPU); ``json_path``: also write the report there. ``op="quality"``
    (not part of "all"): the proposal sampler against a dense render on the generator of the
    train-gan run ``gan_run`` and its hair-shell twin, ``cameras`` labels at ``resolution``^2,
    ``samples`` per ray. ``sr_free_only``: train's SR-free cases only."""
    runs_given, runs = runs, runs or (3 if quick else 9)
    import omnifast

    from .composite import (
        COMPOSITE_PASSES,
        composite_cases,
        composite_forward_with_graph,
        composite_peers,
        composite_runner,
    )
    from .triplane import TRIPLANE_PASSES, triplane_cases, triplane_runner

    if json_path:
        check_output(json_path, "--json", (".json",))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not omnifast._C_loader.compiled_backends()["cuda"]:
        raise ValueError("--device cuda: this build of omnifast has no CUDA kernels")
    ops = {"triplane": ("triplane_sample", triplane_cases, triplane_runner, TRIPLANE_PASSES, None,
                        lambda device: ((), {})),
           "composite": ("composite", composite_cases, composite_runner, COMPOSITE_PASSES,
                         composite_forward_with_graph, composite_peers)}
    if op not in (*OPS, "kernels", "all", "quality"):
        raise ValueError(f"op must be one of {', '.join(OPS)}, kernels, quality or all, got {op!r}")
    if op == "quality":
        if not gan_run:
            raise ValueError("bench quality needs --gan-run RUN (a train-gan run folder)")
        for name, value, low in (("--cameras", cameras, 1), ("--resolution", resolution, 8), ("--samples", samples, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if image_path:
            check_output(image_path, "--image", (".png",))
    chosen = list(ops) if op in ("all", "kernels") else [op] if op in ops else []
    known = {p for name in chosen for p in ops[name][3]} | ({"forward", "forward+backward"} if op in ("all", "render")
                                                            else set())
    unknown = set(passes or ()) - known
    if unknown:
        raise ValueError(f"unknown pass {sorted(unknown)}; choose from {sorted(known)}")
    if memory_budget is not None and not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
        raise ValueError(f"--memory-budget must be a positive number of GiB, got {memory_budget!r}")
    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, int) or cases < 1):
        raise ValueError(f"--cases must be a positive integer, got {cases!r}")
    torch.manual_seed(0)
    print(f"omnifast {omnifast.__version__} | torch {torch.__version__} | "
          f"device {_device_name(device)}")
    report = {"omnifast": omnifast.__version__, "torch": torch.__version__,
              "device": _device_name(device), "device_type": device.type,
              "date": datetime.date.today().isoformat(), "quick": quick, "runs": runs,
              "command": "omnifast " + " ".join(sys.argv[1:]), "results": [],
              "not_measured": {}}
    if device.type == "cuda" and not quick:
        report["copy_bandwidth_GBps"] = _copy_bandwidth(device) / 1e9
        print(f"device-to-device copy: {report['copy_bandwidth_GBps']:.0f} GB/s (read + write)")
    print("times are medians in ms; speedup = reference / omnifast; peak = extra MiB during the pass")
    if chosen:
        print(f"{'op':<9} {'case':<36} {'pass':<24} {'omnifast':>9} {'reference':>10} "
              f"{'speedup':>8} {'peak':>8} {'ref peak':>8}")
    for name in chosen:
        op_name, op_cases, runner, op_passes, graph_keeper, find_peers = ops[name]
        selected = [p for p in op_passes if passes is None or p in passes]
        peers, missing = find_peers(device)
        report["results"] += _bench_op(op_name, op_cases(device, quick=quick)[:cases], runner, device,
                                       runs, selected, graph_keeper, peers)
        report["not_measured"].update(missing)
        for peer, why in missing.items():
            print(f"not measured: {peer} ({why})")
    if op in ("all", "kernels", "correspondence"):
        rows, missing = _bench_correspondence(device, quick, runs, cases, subset)
        report["results"] += rows
        report["not_measured"].update(missing)
    if op in ("all", "render"):
        from .render import run_render_bench

        rows, limits, budget = run_render_bench(device, quick, cases, runs_given, memory_budget, passes)
        report["results"] += rows
        report["render_max_resolution"] = {"memory_budget_bytes": budget, **limits}
    if op in ("all", "train"):
        from .train import run_train_bench

        report["results"] += run_train_bench(device, quick, cases, runs_given, sr_free_only=sr_free_only)
    if op == "quality":
        from .quality import proposal_quality

        report["results"] += proposal_quality(gan_run, cameras=cameras, resolution=resolution, samples=samples,
                                              device=device, image_path=image_path)
    if "copy_bandwidth_GBps" in report:  # how close the forward comes to the bytes it must move
        for row in report["results"]:
            if "omnifast_forward_GBps" in row:
                row["forward_fraction_of_copy_bandwidth"] = (
                    row["omnifast_forward_GBps"] / report["copy_bandwidth_GBps"])
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        text = json.dumps(report, indent=2)
        atomic_write(json_path, lambda f: f.write(text), binary=False)
        print(f"wrote {json_path}")
    return report


def add_parsers(sub):
    bench = sub.add_parser("bench", help="omnifast vs the PyTorch reference, same run")
    bench.add_argument("op", nargs="?", default="all", choices=[*OPS, "kernels", "quality", "all"],
                       help="one operator, the render, a training iteration (train), kernels (every "
                       "operator), all (default), or quality: the proposal sampler against a dense render "
                       "on a trained generator (--gan-run)")
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--quick", action="store_true", help="tiny sizes (checks the harness)")
    bench.add_argument("--cases", type=int, metavar="N", help="only the first N (smallest) cases of each op")
    bench.add_argument("--memory-budget", type=float, metavar="GIB",
                       help="render: the memory the largest resolution must fit (default: the GPU's, 16 on a CPU)")
    bench.add_argument("--runs", type=int, metavar="N", help="timed calls per contender")
    bench.add_argument("--passes", help="comma-separated subset of: forward, forward+backward, "
                       "forward+double-backward (tri-plane only)")
    bench.add_argument("--sr-free", action="store_true", help="train: only the SR-free cases")
    bench.add_argument("--gan-run", metavar="RUN", help="quality: the train-gan run whose generator is rendered")
    bench.add_argument("--cameras", type=int, default=16, help="quality: labels of the run's dataset (default 16)")
    bench.add_argument("--resolution", type=int, default=256, help="quality: pixels per side (default 256)")
    bench.add_argument("--samples", type=int, default=24, help="quality: proposal samples per ray (default 24)")
    bench.add_argument("--image", metavar="PNG", help="quality: the first camera's dense and proposal renders and "
                       "their difference x 10, for each generator")
    return {"bench": bench_command}


def bench_command(args):
    run_benchmarks(args.op, args.device, quick=args.quick, cases=args.cases,
                   passes=args.passes.split(",") if args.passes else None, json_path=args.json, runs=args.runs,
                   memory_budget=None if args.memory_budget is None else args.memory_budget * 2 ** 30,
                   gan_run=args.gan_run, cameras=args.cameras, resolution=args.resolution, samples=args.samples,
                   image_path=args.image, sr_free_only=args.sr_free)
    return 0
