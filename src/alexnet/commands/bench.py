"""``alexnet bench``: speed against a baseline measured in the same run (data, model, train)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import UsageError
from .common import add_parser as _parser

EXAMPLES = """examples:
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



def add_parser(commands) -> None:
    bench = _parser(commands, "bench", "measure speed against a baseline run side by side", EXAMPLES)
    bench.add_argument("what", choices=["data", "model", "train"],
                       help="data: the input pipeline and the prepare step; model: the network alone; "
                            "train: a recipe end to end")
    bench.add_argument("overrides", nargs="*", help="train: config overrides key=value")
    bench.add_argument("--json", action="store_true", help="print only one JSON line to stdout")
    bench.add_argument("--src", type=Path,
                       help="data: a folder of JPEG images (replicated by links to at least --images)")
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
    bench.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                       help="model: also time the network exported to ONNX, float32 and int8, in onnxruntime "
                            "(default: on the CPU)")
    bench.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)  # model: smaller net for tests
    bench.add_argument("--recipe", default="paper", help="train: a recipe name or TOML file (default paper)")
    bench.add_argument("--data", type=Path, help="train: the data folder (data.path)")
    bench.add_argument("--warmup", type=int, default=5, help="train: untimed steps first (default 5)")
    bench.add_argument("--epoch", type=int, default=0, help="train: time the steps of this epoch (0-based) of the "
                       "recipe, with its input size and frozen layers (default 0)")
    bench.add_argument("--ddp", action="store_true", help="train: wrap the network in DistributedDataParallel even "
                                                          "in one process (NCCL on a GPU, gloo on the CPU)")
    bench.set_defaults(run=run, defaults={name: bench.get_default(name) for name in OWNERS})


# Each option and the benches that read it (--steps: model and train): one given to another is refused,
# not silently ignored.
OWNERS = {"src": "data", "images": "data", "seconds": "data", "batch_size": "model", "rounds": "model",
          "device": "model", "compile": "model", "onnx": "model", "width": "model", "recipe": "train", "data": "train",
          "warmup": "train", "epoch": "train", "ddp": "train", "steps": "model train"}


def run(args) -> int:
    defaults = args.defaults
    given = [name for name, owner in OWNERS.items() if args.what not in owner.split()
             and getattr(args, name) != defaults[name]]
    if given:
        name = given[0]
        raise UsageError(f"--{name.replace('_', '-')} is for bench {OWNERS[name].replace(' ', ' and bench ')}, "
                         f"not bench {args.what}: drop it (alexnet bench --help lists each bench's options)")
    if args.overrides and args.what != "train":
        raise UsageError(f"bench {args.what} takes no key=value overrides (got {args.overrides[0]!r}); "
                         "only bench train does")
    if args.what == "data":
        if args.src is None or args.images < 1 or not 0 < args.seconds < math.inf:
            raise UsageError(f"bench data needs --src DIR, --images at least 1 and --seconds positive and finite; "
                             f"got {args.src}, {args.images} and {args.seconds}")
        from ..bench.data import bench_data

        bench_data(args.src, json_out=args.json, min_images=args.images, seconds=args.seconds)
    elif args.what == "model":
        steps = 10 if args.steps is None else args.steps
        if args.batch_size < 1 or steps < 1 or args.rounds < 1 or args.width <= 0:
            raise UsageError("bench model needs --batch-size, --steps and --rounds of at least 1")
        from ..bench.model import bench_model

        bench_model(args.batch_size, steps, args.rounds, args.device, args.compile, args.width, args.json, args.onnx)
    else:
        steps = 50 if args.steps is None else args.steps
        if steps < 1 or args.warmup < 0 or args.epoch < 0:
            raise UsageError(f"bench train needs --steps at least 1, --warmup and --epoch at least 0; "
                             f"got {steps}, {args.warmup}, {args.epoch}")
        from ..bench.train import bench_train

        bench_train(args.recipe, args.data, args.overrides, steps, args.warmup, args.ddp, args.json, args.epoch)
    return 0
