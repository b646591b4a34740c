"""`alexnet <command>`: thin argument parsing around the package's functions.

Every command exits 0 on success and 2 with a one-line message on bad usage or bad input;
results that scripts read (eval's JSON line) go to stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import ablate, export, figure1, figures, predict, report, retrieve, serve, weights
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
    """``alexnet`` and its sub-commands: each ``add_*`` registers one and its ``run`` (``set_defaults``)."""
    parser = argparse.ArgumentParser(prog="alexnet", description="The AlexNet paper (Krizhevsky et al., 2012) as software.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


FORMATTER = argparse.RawDescriptionHelpFormatter


def add_train(commands) -> None:
    train = commands.add_parser("train", help="train a network", epilog=TRAIN_EXAMPLES, formatter_class=FORMATTER)
    train.add_argument("--recipe", default="cifar10", help=f"recipe name ({', '.join(cfgmod.recipe_names())}) or a .toml file")
    train.add_argument("--data", help="dataset location (data.path)")
    train.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.02")
    train.set_defaults(run=cmd_train)


def add_eval(commands) -> None:
    ev = commands.add_parser("eval", help="top-1/top-5 error of a checkpoint", epilog=EVAL_EXAMPLES, formatter_class=FORMATTER)
    ev.add_argument("--checkpoint", required=True, type=Path)
    ev.add_argument("--data", help="dataset location (default: the one in the checkpoint's config)")
    ev.add_argument("--crops", type=int, choices=[1, 2, 4, 10], help="views per image, softmax averaged: 1 centre, "
                    "2 centre + mirror, 4 (CIFAR-10) the whole image and its centre training window, each mirrored, "
                    "10 the paper's four corners + centre and mirrors (default: the run's train.eval_crops or eval_flip)")
    ev.add_argument("--ensemble", nargs="+", type=Path, default=[], metavar="CKPT",
                    help="more checkpoints whose softmax is averaged with --checkpoint's (the paper's '5 CNNs')")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.limit=1000")
    ev.set_defaults(run=cmd_eval)


PREPARE_EXAMPLES = """examples:
  alexnet prepare imagenet --src /data/ilsvrc2012 --out /data/imagenet-256   # official tars + devkit
  alexnet prepare imagenet --src /data/my_images --out /data/mine --workers 8  # any ImageFolder (train/, val/)
  alexnet prepare imagenet --src /data/ilsvrc2012 --out /data/imagenet-raw --format raw
  alexnet prepare cifar10                                 # decode CIFAR-10 once into the cache
"""


def add_prepare(commands) -> None:
    prep = commands.add_parser("prepare", help="decode a dataset once into the fast prepared format",
                               epilog=PREPARE_EXAMPLES, formatter_class=FORMATTER)
    prep.add_argument("dataset", choices=["imagenet", "cifar10"])
    prep.add_argument("--src", type=Path, help="imagenet: folder with the ILSVRC-2012 tars/devkit, extracted folders or an ImageFolder; "
                                               "cifar10: archive, batches folder or ImageFolder (default: cache, mirror, download)")
    prep.add_argument("--out", type=Path, help="imagenet: output folder for shards, manifests and statistics")
    prep.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    prep.add_argument("--format", choices=["jpeg", "raw"], default="jpeg",
                      help="jpeg: quality-90 JPEG records (about 35 GB for ImageNet); raw: uint8 pixels (about 252 GB)")
    prep.set_defaults(run=cmd_prepare)


def cmd_prepare(args) -> int:
    if args.dataset == "cifar10":
        from .data.cifar import load_cifar10

        train, test = load_cifar10(str(args.src) if args.src else None)
        print(json.dumps({"dataset": "cifar10", "train": len(train.labels), "test": len(test.labels)}))
        return 0
    from .data.prepare import prepare_imagenet

    if args.src is None or args.out is None:
        raise UsageError("prepare imagenet needs --src PATH (the ILSVRC-2012 files or an ImageFolder) and --out DIR")
    summary = prepare_imagenet(args.src, args.out, workers=args.workers, fmt=args.format)
    print(json.dumps(summary, default=str))
    return 0


BENCH_EXAMPLES = """examples:
  alexnet bench data --src ../shared/data/imagenet-samples --json   # one JSON line on stdout
  alexnet bench data --src my_jpegs/ --images 4000 --seconds 3       # more images, longer rounds
  alexnet bench model --batch-size 256 --json                        # the paper net vs torchvision's alexnet
  alexnet bench train --recipe paper --data /data/imagenet-256 --steps 200 data.decode=device

bench data times, on one core (one process, one thread), our training input (prepared JPEG and
raw shards -> random 224 crops + mirrors on uint8) against torchvision's ImageFolder + PIL +
RandomResizedCrop pipeline, and alexnet prepare against PIL resize + crop + save as JPEG q90.
Images named <wnid>_<name>.JPEG are grouped into classes by the wnid.
bench model times training steps and inference of the paper's network (bf16, channels_last, our LRN,
torch.compile and CUDA graphs where faster) against torchvision.models.alexnet() in eager fp32.
bench train runs a recipe for --steps steps and splits each step's time into waiting for data, copy to
the device, augmentation and compute, with a recommended data.workers.
"""


def add_bench(commands) -> None:
    bench = commands.add_parser("bench", help="measure speed against a baseline run side by side",
                                epilog=BENCH_EXAMPLES, formatter_class=FORMATTER)
    bench.add_argument("what", choices=["data", "model", "train"],
                       help="data: the input pipeline and the prepare step; model: the network alone; "
                            "train: a recipe end to end")
    bench.add_argument("overrides", nargs="*", help="train: config overrides key=value")
    bench.add_argument("--json", action="store_true", help="print only one JSON line to stdout")
    bench.add_argument("--src", type=Path, help="data: a folder of JPEG images (replicated by links to at least --images)")
    bench.add_argument("--images", type=int, default=1000, help="data: at least this many images (default 1000)")
    bench.add_argument("--seconds", type=float, default=2.0, help="data: time per data-path measurement per round "
                                                                  "(default 2)")
    bench.add_argument("--batch-size", type=int, default=128, help="model: images per step (default 128)")
    bench.add_argument("--steps", type=int, default=None, help="model: timed steps per round (default 10); "
                                                               "train: timed training steps (default 50)")
    bench.add_argument("--rounds", type=int, default=3, help="model: interleaved rounds (default 3)")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="model: where to run")
    bench.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="model: also time whole-network torch.compile (and CUDA graphs on a GPU), keep the "
                            "faster (default: on a GPU only)")
    bench.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)  # model: smaller net for tests
    bench.add_argument("--recipe", default="paper", help="train: a recipe name or TOML file (default paper)")
    bench.add_argument("--data", type=Path, help="train: the data folder (data.path)")
    bench.add_argument("--warmup", type=int, default=5, help="train: untimed steps first (default 5)")
    bench.add_argument("--epoch", type=int, default=0, help="train: time the steps of this epoch (0-based) of the "
                       "recipe, with its input size and frozen layers (default 0)")
    bench.add_argument("--ddp", action="store_true", help="train: wrap the network in DistributedDataParallel even "
                                                          "in one process (NCCL on a GPU, gloo on the CPU)")
    bench.set_defaults(run=cmd_bench)


def cmd_bench(args) -> int:
    from . import bench

    if args.overrides and args.what != "train":
        raise UsageError(f"bench {args.what} takes no key=value overrides (got {args.overrides[0]!r}); only bench train does")
    if args.what == "data":
        if args.src is None or args.images < 1 or args.seconds <= 0:
            raise UsageError(f"bench data needs --src DIR, --images at least 1 and --seconds positive; "
                             f"got {args.src}, {args.images} and {args.seconds}")
        bench.bench_data(args.src, json_out=args.json, min_images=args.images, seconds=args.seconds)
    elif args.what == "model":
        steps = 10 if args.steps is None else args.steps
        if args.batch_size < 1 or steps < 1 or args.rounds < 1 or args.width <= 0:
            raise UsageError("bench model needs --batch-size, --steps and --rounds of at least 1")
        bench.bench_model(args.batch_size, steps, args.rounds, args.device, args.compile, args.width, args.json)
    else:
        steps = 50 if args.steps is None else args.steps
        if steps < 1 or args.warmup < 0 or args.epoch < 0:
            raise UsageError(f"bench train needs --steps at least 1, --warmup and --epoch at least 0; "
                             f"got {steps}, {args.warmup}, {args.epoch}")
        bench.bench_train(args.recipe, args.data, args.overrides, steps, args.warmup, args.ddp, args.json, args.epoch)
    return 0


def cmd_train(args) -> int:
    from .run import load_run
    from .train import train

    resume = args.resume or _torchrun_restart(args)
    if resume:
        if args.out is None:
            raise UsageError("--resume needs --out RUN_DIR (the run folder to continue)")
        last = args.out / "checkpoints" / "last.pt"
        if not last.is_file():
            raise UsageError(f"--resume: no checkpoint at {last}; start without --resume")
        loaded = load_run(last, args.overrides, args.data, keep_towers=True)  # read once: train restores from it
        config = loaded.config
    else:
        loaded = None
        config = cfgmod.build_config(cfgmod.read_recipe(args.recipe), args.overrides, args.data)
    out = args.out or Path("runs") / f"{config.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = train(config, out, resume=loaded)
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


def cmd_eval(args) -> int:
    from .data.datasets import load_dataset
    from .data.pipeline import views_refusal
    from .evaluate import evaluate_views
    from .run import load_run
    from .runtime import init_distributed, main_first, pick_device, shutdown_distributed

    first = load_run(args.checkpoint, args.overrides, args.data)
    members = [load_run(path) for path in args.ensemble]  # a bad file fails before the data is read
    config = first.config
    ddp = init_distributed(config.train.device)  # under torchrun: each process evaluates its share
    device = pick_device(config.train.device, ddp.local_rank)
    with main_first(ddp):  # one process fills the CIFAR-10 cache
        data = load_dataset(config.data, config.seed, ddp)
    pipeline = first.pipeline_for(data)
    for member in members:  # the same classes and the same input as the first network
        member.same_input(pipeline, data)
    crops = args.crops or config.train.val_crops
    if why := views_refusal(pipeline.kind, crops):
        raise UsageError(f"--crops {crops} for {args.checkpoint}: {why}")
    pipeline = pipeline.to(device)
    models = [loaded.model.to(device) for loaded in (first, *members)]
    result = evaluate_views(models, data.val_images, data.val_labels, device=device, crops=crops,
                            batch_size=config.data.eval_batch_size, inputs=lambda x: pipeline.evaluate(x, crops),
                            precision=config.train.precision, ddp=ddp)
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
    if getattr(args, "ensemble", None):  # nargs="+" also took the key=value overrides that followed it
        overrides += [str(p) for p in args.ensemble if "=" in p.name and not p.exists()]
        args.ensemble = [p for p in args.ensemble if not ("=" in p.name and not p.exists())]
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


# Every command, in --help order: each registers its parser and its run(args) -> exit code.
COMMANDS = (add_train, add_eval, predict.add_parser, retrieve.add_parser, add_prepare, export.add_parser,
            weights.add_parser, serve.add_parser, add_bench, figure1.add_parser, ablate.add_parser, figures.add_parser,
            report.add_parser)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from .runtime import keep_freed_memory

    keep_freed_memory()  # the command's own process, not a library user's: see its docstring
    try:
        return args.run(args)
    except UsageError as err:
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
