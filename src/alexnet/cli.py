"""`alexnet <command>`: thin argument parsing around the package's functions.

Every command exits 0 on success and 2 with a one-line message on bad usage or bad input;
results that scripts read (eval's JSON line) go to stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from . import config as cfgmod
from .errors import UsageError

TRAIN_EXAMPLES = """examples:
  alexnet train                                   # CIFAR-10 default recipe into runs/cifar10-<time>
  alexnet train --recipe cifar10 --out runs/demo optim.epochs=2 model.lrn=false
  alexnet train --recipe imagenet --data my_photos/ optim.epochs=30   # any ImageFolder: train/<class>/, val/<class>/
  alexnet train --recipe paper --data /data/imagenet-256 --out runs/paper   # the 2012 recipe on prepared ILSVRC-2012
  alexnet train --recipe my_recipe.toml seed=1 data.batch_size=64 train.precision=fp32
  alexnet train --out runs/demo --resume          # continue a stopped run

recipes: cifar10 (the default main job), imagenet (the paper's network trained the modern way: learns
from the first epoch on any ImageNet-style set), paper (the 2012 recipe as published; with fewer than
about 50 classes it sits flat, see docs/paper-recipe.md). fc8 gets as many outputs as the training data
has classes; an explicit model.num_classes that disagrees exits 2 before anything is written. An epoch
that did not learn (loss at ln(classes), or one class predicted for every image) prints a warning: line.
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
    ev.add_argument("--crops", type=int, choices=[1, 2, 10], help="views per image, softmax averaged: 1 centre, "
                    "2 centre + mirror, 10 the paper's four corners + centre and mirrors (default: the run's eval_flip)")
    ev.add_argument("--ensemble", nargs="+", type=Path, default=[], metavar="CKPT",
                    help="more checkpoints whose softmax is averaged with --checkpoint's (the paper's '5 CNNs')")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.limit=1000")
    add_prepare_parser(commands)
    add_bench_parser(commands)
    exp = commands.add_parser("export", help="write a checkpoint's weights in another format",
                              epilog="examples:\n  alexnet export --checkpoint runs/demo/checkpoints/best.pt "
                                     "--format safetensors --out alexnet-cifar10.safetensors",
                              formatter_class=fmt)
    exp.add_argument("--checkpoint", required=True, type=Path)
    exp.add_argument("--format", default="safetensors", choices=["safetensors"])
    exp.add_argument("--out", required=True, type=Path)
    for name in PAPER_COMMANDS:  # each module adds its own sub-command and runs it
        importlib.import_module(f".{name}", __package__).add_parser(commands)
    return parser


# The paper's claims and figures, one module each: add_parser(commands) and run(args) -> exit code.
PAPER_COMMANDS = ("figure1", "ablate", "figures", "report")


PREPARE_EXAMPLES = """examples:
  alexnet prepare imagenet --src /data/ilsvrc2012 --out /data/imagenet-256   # official tars + devkit
  alexnet prepare imagenet --src /data/my_images --out /data/mine --workers 8  # any ImageFolder (train/, val/)
  alexnet prepare imagenet --src /data/ilsvrc2012 --out /data/imagenet-raw --format raw
  alexnet prepare cifar10                                 # decode CIFAR-10 once into the cache
"""


def add_prepare_parser(commands) -> None:
    prep = commands.add_parser("prepare", help="decode a dataset once into the fast prepared format",
                               epilog=PREPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("dataset", choices=["imagenet", "cifar10"])
    prep.add_argument("--src", type=Path, help="imagenet: folder with the ILSVRC-2012 tars/devkit, extracted folders or an ImageFolder; "
                                               "cifar10: archive, batches folder or ImageFolder (default: cache, mirror, download)")
    prep.add_argument("--out", type=Path, help="imagenet: output folder for shards, manifests and statistics")
    prep.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    prep.add_argument("--format", choices=["jpeg", "raw"], default="jpeg",
                      help="jpeg: quality-90 JPEG records (about 35 GB for ImageNet); raw: uint8 pixels (about 252 GB)")


def cmd_prepare(args) -> int:
    if args.dataset == "cifar10":
        from .data.cifar import load_cifar10

        train, test = load_cifar10(str(args.src) if args.src else None)
        print(json.dumps({"dataset": "cifar10", "train": len(train.labels), "test": len(test.labels)}))
        return 0
    from .data.imagenet import prepare_imagenet

    if args.src is None or args.out is None:
        raise UsageError("prepare imagenet needs --src PATH (the ILSVRC-2012 files or an ImageFolder) and --out DIR")
    summary = prepare_imagenet(args.src, args.out, workers=args.workers, fmt=args.format)
    print(json.dumps(summary, default=str))
    return 0


BENCH_EXAMPLES = """examples:
  alexnet bench data --src ../shared/data/imagenet-samples --json   # one JSON line on stdout
  alexnet bench data --src my_jpegs/ --images 4000 --seconds 3       # more images, longer rounds

bench data times, on one core (one process, one thread), our training input (prepared JPEG and
raw shards -> random 224 crops + mirrors on uint8) against torchvision's ImageFolder + PIL +
RandomResizedCrop pipeline, and alexnet prepare against PIL resize + crop + save as JPEG q90.
Images named <wnid>_<name>.JPEG are grouped into classes by the wnid.
"""


def add_bench_parser(commands) -> None:
    bench = commands.add_parser("bench", help="measure speed against a baseline run side by side",
                                epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("what", choices=["data"], help="data: the input pipeline and the prepare step")
    bench.add_argument("--src", type=Path, required=True, help="a folder of JPEG images (replicated by links "
                                                               "to at least --images)")
    bench.add_argument("--json", action="store_true", help="print only one JSON line to stdout")
    bench.add_argument("--images", type=int, default=1000, help="at least this many images (default 1000)")
    bench.add_argument("--seconds", type=float, default=2.0, help="time per data-path measurement per round "
                                                                  "(default 2)")


def cmd_bench(args) -> int:
    from .bench import bench_data

    if args.images < 1 or args.seconds <= 0:
        raise UsageError(f"--images must be at least 1 and --seconds positive; got {args.images} and {args.seconds}")
    bench_data(args.src, json_out=args.json, min_images=args.images, seconds=args.seconds)
    return 0


def cmd_export(args) -> int:
    from .export import export

    path = export(args.checkpoint, args.format, args.out)
    print(json.dumps({"format": args.format, "out": str(path)}))
    return 0


def _overrides(args) -> list[str]:
    """The key=value overrides, with --data as data.path."""
    return list(args.overrides) + ([f"data.path={json.dumps(args.data)}"] if args.data else [])


def cmd_train(args) -> int:
    from .train import train

    overrides = _overrides(args)
    resume = args.resume or _torchrun_restart(args)
    if resume:
        if args.out is None:
            raise UsageError("--resume needs --out RUN_DIR (the run folder to continue)")
        recipe = _checkpoint_config(args.out / "checkpoints" / "last.pt")
    else:
        recipe = cfgmod.read_recipe(args.recipe)
    config = cfgmod.build_config(recipe, overrides)
    out = args.out or Path("runs") / f"{config.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = train(config, out, resume=resume)
    print(json.dumps(summary))
    return 0


def _torchrun_restart(args) -> bool:
    """Under torchrun, every process and every restart must use one run folder; a restart after a
    failure (``--max-restarts``) continues from its last checkpoint by itself."""
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return False
    if args.out is None:
        raise UsageError("under torchrun pass --out RUN_DIR, so that every process and every restart use the same run folder")
    restarted = int(os.environ["TORCHELASTIC_RESTART_COUNT"]) > 0
    return restarted and (args.out / "checkpoints" / "last.pt").is_file()


def _checkpoint_config(path: Path) -> dict:
    from .checkpoint import load_checkpoint

    return load_checkpoint(path).get("config", {})


def cmd_eval(args) -> int:
    from .checkpoint import check_classes, ensemble_member, eval_pipeline, load_checkpoint, load_weights
    from .data.datasets import load_dataset
    from .evaluate import evaluate_views
    from .model import AlexNet
    from .runtime import init_distributed, main_first, pick_device, shutdown_distributed

    ckpt = load_checkpoint(args.checkpoint)
    overrides = _overrides(args)
    config = cfgmod.build_config(ckpt.get("config", {}), overrides)
    ddp = init_distributed(config.train.device)  # under torchrun: each process evaluates its share
    device = pick_device(config.train.device, ddp.local_rank)
    model = AlexNet(config.model)
    load_weights(model, ckpt, args.checkpoint)
    members = [load_checkpoint(path) for path in args.ensemble]  # a bad file fails before the data is read
    with main_first(ddp):  # one process fills the CIFAR-10 cache
        data = load_dataset(config.data, config.seed, ddp.main)
    check_classes(ckpt, args.checkpoint, data)
    pipeline = eval_pipeline(ckpt, config, data)
    models = [model] + [ensemble_member(c, path, data, pipeline) for c, path in zip(members, args.ensemble)]
    crops = args.crops or (2 if config.train.eval_flip else 1)
    pipeline = pipeline.to(device)
    result = evaluate_views([m.to(device) for m in models], data.val_images, data.val_labels, device=device,
                            crops=crops, batch_size=config.data.eval_batch_size,
                            inputs=lambda x: pipeline.evaluate(x, crops), precision=config.train.precision)
    if ddp.main:
        print(json.dumps({**result, "crops": crops, "models": len(models), "checkpoint": str(args.checkpoint)}))
    shutdown_distributed()
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with key=value overrides taken wherever they stand: ``train data.limit=10
    --out runs/x optim.epochs=1`` (argparse alone stops the overrides at the first option)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.parse_args(argv)  # argparse's own message for what is left, and exit 2
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    handlers = {"train": cmd_train, "eval": cmd_eval, "prepare": cmd_prepare, "export": cmd_export,
                "bench": cmd_bench}
    try:
        if args.command in PAPER_COMMANDS:
            return importlib.import_module(f".{args.command}", __package__).run(args)
        return handlers[args.command](args)
    except UsageError as err:
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
