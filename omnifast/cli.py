"""The omnifast command line: parsing and dispatch only. Each area adds its own subcommands
(`add_parsers(sub)` returns their handlers): `info`; `bench` (omnifast.bench.commands);
`make-flame` (omnifast.flame.commands); `make-dataset` (omnifast.data.commands); `train-gan`, `generate`, `eval-gan`
(omnifast.gan.commands); `train-sdf`, `eval-sdf`, `export-sdf`
(omnifast.sdf.commands); `demo` (omnifast.demo).

An error a user can cause (a bad value, a missing or unreadable file) prints one line naming it
and exits with status 2; OMNIFAST_TRACEBACK=1 shows the traceback instead."""
import argparse
import os
import sys

USER_ERRORS = (ValueError, OSError)  # RunError is a ValueError; FileNotFoundError an OSError


def info_command(args):
    import omnifast

    for key, value in omnifast.info().items():
        value = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:>10}: {value}")
    return 0


def build_parser():
    from . import demo
    from .bench import commands as bench_commands
    from .data import commands as data_commands
    from .flame import commands as flame_commands
    from .gan import commands as gan_commands
    from .sdf import commands as sdf_commands

    parser = argparse.ArgumentParser(prog="omnifast", description="omnifast: fast kernels and the semantic "
                                     "SDF for geometry-guided 3D heads (EG3D / OmniAvatar)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch, compiled backends, devices")
    handlers = {"info": info_command}
    for area in (bench_commands, flame_commands, data_commands, gan_commands, sdf_commands, demo):
        handlers.update(area.add_parsers(sub))
    return parser, handlers


def main(argv=None):
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except USER_ERRORS as error:
        if os.environ.get("OMNIFAST_TRACEBACK"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if os.environ.get("RANK", "0") == "0":  # under torchrun, said once
            print(f"omnifast {args.command}: {message}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as error:  # what the size checks could not foresee
        text = str(error)
        if os.environ.get("OMNIFAST_TRACEBACK") or not (isinstance(error, MemoryError) or "out of memory" in text
                                                        or "can't allocate memory" in text):
            raise
        print(f"omnifast {args.command}: out of memory ({text.strip().splitlines()[0][:200] if text.strip() else ''}); "
              "lower the resolution, the batch or the number of seeds", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
