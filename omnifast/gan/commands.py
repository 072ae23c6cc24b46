"""The ``omnifast train-gan`` command (one process, or several under torchrun)."""
import json


def add_parsers(sub):
    from ..sdf.commands import at_least, positive_float

    train = sub.add_parser("train-gan", help="train OmniAvatar's generator (stage II) on a dataset")
    train.add_argument("--data", help="the dataset folder or zip (make-dataset; required for a new run)")
    train.add_argument("--sdf-run", help="the stage I run folder whose semantic SDF warps the samples")
    train.add_argument("--out", required=True, help="run folder (config, checkpoint, logs, image grids)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--preset", choices=["tiny", "64", "128", "256"],
                       help="network sizes and neural rendering resolution (default: tiny on a CPU, 64 on CUDA)")
    train.add_argument("--config", help="a JSON file of settings (the format of a run's config.json)")
    train.add_argument("--steps", type=at_least(1), help="training iterations (default 300)")
    train.add_argument("--batch", type=at_least(1), help="images per process and iteration")
    train.add_argument("--warp", choices=["sdf", "mesh"], help="the stage I network (default) or the exact mesh")
    train.add_argument("--backend", choices=["omnifast", "reference"], help="renderer kernels (default omnifast)")
    train.add_argument("--nrr-final", type=at_least(8), help="neural rendering resolution to fade to")
    train.add_argument("--lr-g", type=positive_float)
    train.add_argument("--lr-d", type=positive_float)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
    train.add_argument("--image-every", type=at_least(1), help="iterations between image grids (default 100)")
    train.add_argument("--checkpoint-every", type=at_least(1), help="iterations between checkpoints (default 100)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"train-gan": train_gan_command}


FLAGS = ("steps", "batch", "warp", "backend", "nrr_final", "lr_g", "lr_d", "seed", "image_every", "checkpoint_every")


def train_gan_command(args):
    import os

    from ..runs import RunError, read_json
    from ..sdf.commands import device_of
    from .train import GANConfig, train_gan

    device = device_of(args.device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    settings = {}
    if args.config:
        settings.update(read_json(args.config))
    settings.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    if args.resume and not (args.data or args.sdf_run or args.config or args.preset):
        config = None
    else:
        if not (args.data or "dataset" in settings) or not (args.sdf_run or "sdf_run" in settings):
            raise RunError("a new run needs --data and --sdf-run (or a --config naming them)")
        if args.data:
            settings["dataset"] = args.data
        if args.sdf_run:
            settings["sdf_run"] = args.sdf_run
        preset = args.preset or settings.pop("preset", None) or ("64" if device.startswith("cuda") else "tiny")
        config = GANConfig.with_preset(preset, device=device, **settings)
    terms = train_gan(config, args.out, resume=args.resume, steps=args.steps, progress=not args.no_progress)
    print(json.dumps({k: round(v, 5) for k, v in terms.items()}))
    return 0
