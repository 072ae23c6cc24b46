"""The ``omnifast make-flame`` command."""


def add_parsers(sub):
    make = sub.add_parser("make-flame", help="write a synthetic FLAME-format model (FLAME itself is licensed)")
    from ..sdf.commands import SEED

    make.add_argument("dir", help="a new or empty folder")
    make.add_argument("--seed", type=SEED, default=0)
    return {"make-flame": make_flame}


def make_flame(args):
    import os

    from ..runs import check_output
    from .synthetic import make_synthetic_flame

    check_output(args.dir, "dir", what="folder")
    if os.path.isdir(args.dir) and os.listdir(args.dir):  # a real FLAME model, a run: never overwritten
        raise FileExistsError(f"{args.dir} is not empty (it holds {sorted(os.listdir(args.dir))[0]!r}): give a new "
                              "or empty folder for the synthetic FLAME model")
    for path in make_synthetic_flame(args.dir, seed=args.seed):
        print(f"wrote {path}")
    return 0
