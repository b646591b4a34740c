"""`alexnet <command>`: thin argument parsing around the package's functions.

Every command exits 0 on success and 2 with a one-line message on bad usage or bad input;
results that scripts read (eval's JSON line) go to stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import config as cfgmod
from .errors import UsageError

TRAIN_EXAMPLES = """examples:
  alexnet train                                   # CIFAR-10 default recipe into runs/cifar10-<time>
  alexnet train --recipe cifar10 --out runs/demo optim.epochs=2 model.lrn=false
  alexnet train --recipe my_recipe.toml seed=1 data.batch_size=64 train.precision=fp32
  alexnet train --out runs/demo --resume          # continue a stopped run
"""
EVAL_EXAMPLES = """examples:
  alexnet eval --checkpoint runs/demo/checkpoints/best.pt
  alexnet eval --checkpoint runs/demo/checkpoints/last.pt --data ../shared/data/cifar10-jpeg.tar.gz data.limit=1000
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet", description="The AlexNet paper (Krizhevsky et al., 2012) as software.")
    commands = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    train = commands.add_parser("train", help="train a network", epilog=TRAIN_EXAMPLES, formatter_class=fmt)
    train.add_argument("--recipe", default="cifar10", help=f"recipe name ({', '.join(cfgmod.recipe_names())}) or a .toml file")
    train.add_argument("--data", help="dataset location (overrides data.path)")
    train.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.02")
    ev = commands.add_parser("eval", help="top-1/top-5 error of a checkpoint", epilog=EVAL_EXAMPLES, formatter_class=fmt)
    ev.add_argument("--checkpoint", required=True, type=Path)
    ev.add_argument("--data", help="dataset location (default: the one in the checkpoint's config)")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.limit=1000")
    return parser


def cmd_train(args) -> int:
    from .train import train

    overrides = list(args.overrides) + ([f"data.path={json.dumps(args.data)}"] if args.data else [])
    if args.resume:
        if args.out is None:
            raise UsageError("--resume needs --out RUN_DIR (the run folder to continue)")
        recipe = _checkpoint_config(args.out / "checkpoints" / "last.pt")
    else:
        recipe = cfgmod.read_recipe(args.recipe)
    config = cfgmod.build_config(recipe, overrides)
    out = args.out or Path("runs") / f"{config.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = train(config, out, resume=args.resume)
    print(json.dumps(summary))
    return 0


def _checkpoint_config(path: Path) -> dict:
    from .checkpoint import load_checkpoint

    return load_checkpoint(path).get("config", {})


def cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint
    from .data.datasets import load_dataset
    from .evaluate import evaluate
    from .model import AlexNet
    from .runtime import pick_device

    ckpt = load_checkpoint(args.checkpoint)
    overrides = list(args.overrides) + ([f"data.path={json.dumps(args.data)}"] if args.data else [])
    config = cfgmod.build_config(ckpt.get("config", {}), overrides)
    device = pick_device(config.train.device)
    model = AlexNet(config.model)
    model.load_state_dict(ckpt["model"])
    data = load_dataset(config.data, config.seed)
    result = evaluate(model.to(device), data.val_images, data.val_labels, batch_size=config.data.eval_batch_size,
                      device=device, mean=config.data.mean, std=config.data.std, precision=config.train.precision,
                      channels_last=config.train.channels_last, flip=config.train.eval_flip)
    print(json.dumps({**result, "checkpoint": str(args.checkpoint)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "eval": cmd_eval}
    try:
        return handlers[args.command](args)
    except UsageError as err:
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
