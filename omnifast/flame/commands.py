"""The ``omnifast make-flame`` command."""


def add_parsers(sub):
    make = sub.add_parser("make-flame", help="write a synthetic FLAME-format model (FLAME itself is licensed)")
    make.add_argument("dir")
    make.add_argument("--seed", type=int, default=0)
    return {"make-flame": make_flame}


def make_flame(args):
    from .synthetic import make_synthetic_flame

    for path in make_synthetic_flame(args.dir, seed=args.seed):
        print(f"wrote {path}")
    return 0
