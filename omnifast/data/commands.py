"""The ``omnifast make-dataset`` command."""


def add_parsers(sub):
    from ..sdf.commands import SEED, at_least

    make = sub.add_parser("make-dataset", help="render a synthetic training set of FLAME heads (no download)")
    make.add_argument("out", help="the dataset folder, or a path ending in .zip")
    make.add_argument("--flame-dir", required=True, help="the FLAME model (real, or from make-flame)")
    make.add_argument("--count", type=at_least(1), default=1000, help="images (default 1000)")
    make.add_argument("--resolution", type=at_least(8), default=64, help="pixels per side (default 64)")
    make.add_argument("--n-shape", type=at_least(1), default=100, help="FLAME shape coefficients (as the stage I run)")
    make.add_argument("--n-expr", type=at_least(0), default=50,
                      help="FLAME expression coefficients (as the stage I run)")
    make.add_argument("--seed", type=SEED, default=0)
    make.add_argument("--batch", type=at_least(1), default=32, help="images rendered together")
    make.add_argument("--device", help="cpu or cuda[:i] (default: cuda when available)")
    make.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"make-dataset": make_dataset_command}


def make_dataset_command(args):
    from ..runs import check_memory, check_output
    from ..sdf.commands import device_of
    from .make import make_dataset

    as_zip = args.out.lower().endswith(".zip")
    check_output(args.out, "out", what="file" if as_zip else "folder")
    # The images are held (as PNG, at most their raw size) until the dataset is written at once.
    # Rendering holds a batch's rays and samples (about a KiB per pixel).
    check_memory(args.count * 3 * args.resolution ** 2 + min(args.batch, args.count) * args.resolution ** 2 * 1024,
                 f"{args.count} images at --resolution {args.resolution} (batch {args.batch})")
    make_dataset(args.out, args.flame_dir, args.count, args.resolution, n_shape=args.n_shape, n_expr=args.n_expr,
                 seed=args.seed, batch=args.batch, as_zip=as_zip,
                 device=device_of(args.device), progress=not args.no_progress)
    return 0
