"""``alexnet prepare``: decode a dataset once into the fast prepared format (the paper's section 2)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from .common import add_parser as _parser
from .common import out_folder

EXAMPLES = """examples:
  alexnet prepare imagenet --src /data/ilsvrc2012 --out /data/imagenet-256   # official tars + devkit
  alexnet prepare imagenet --src /data/my_images --out /data/mine --workers 8  # any ImageFolder (train/, val/)
  alexnet prepare imagenet --src /data/ilsvrc2012 --out /data/imagenet-raw --format raw
  alexnet prepare cifar10                                 # decode CIFAR-10 once into the cache
"""


def add_parser(commands) -> None:
    p = _parser(commands, "prepare", "decode a dataset once into the fast prepared format", EXAMPLES)
    p.add_argument("dataset", choices=["imagenet", "cifar10"])
    p.add_argument("--src", type=Path,
                   help="imagenet: folder with the ILSVRC-2012 tars/devkit, extracted folders or an ImageFolder; "
                        "cifar10: archive, batches folder or ImageFolder (default: cache, mirror, download)")
    p.add_argument("--out", type=Path, help="imagenet: output folder for shards, manifests and statistics")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    p.add_argument("--format", choices=["jpeg", "raw"], default="jpeg",
                   help="jpeg: quality-90 JPEG records (about 28 GB for ImageNet); raw: uint8 pixels "
                        "(about 252 GB)")
    p.add_argument("--resize", choices=["center", "squash"], default="center",
                   help="imagenet: center (default: shorter side 256, the centre 256x256, the paper's) or squash "
                        "(the whole photo to 256x256, Caffe's data)")
    p.set_defaults(run=run)


def run(args) -> int:
    out_folder("--out", args.out)
    if args.dataset == "cifar10":
        from ..data.cifar.load import load_cifar10

        if args.out is not None or args.workers is not None:
            given = f"--out {args.out}" if args.out is not None else f"--workers {args.workers}"
            raise UsageError(f"{given} is for prepare imagenet; prepare cifar10 decodes into the cache "
                             "($ALEXNET_DATA, default ~/.cache/alexnet): drop it")

        train, test = load_cifar10(str(args.src) if args.src else None)
        print(json.dumps({"dataset": "cifar10", "train": len(train.labels), "test": len(test.labels)}))
        return 0
    from ..data.imagenet.prepare import prepare_imagenet

    if args.src is None or args.out is None:
        raise UsageError("prepare imagenet needs --src PATH (the ILSVRC-2012 files or an ImageFolder) and --out DIR")
    summary = prepare_imagenet(args.src, args.out, workers=args.workers, fmt=args.format, resize=args.resize)
    print(json.dumps(summary, default=str))
    return 0
