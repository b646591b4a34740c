"""``alexnet import``: torchvision's or BVLC Caffe's published AlexNet weights as a checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import UsageError
from .common import add_parser as _parser
from .common import out_file

EXAMPLES = """examples:
  alexnet import torchvision alexnet-owt-7be5be79.pth --out alexnet-torchvision.pt
  alexnet import caffe bvlc_alexnet.caffemodel --mean ilsvrc_2012_mean.npy --out alexnet-caffe.pt
  alexnet import caffe bvlc_alexnet.caffemodel --mean imagenet_mean.binaryproto --out alexnet-caffe.pt
  alexnet import caffe bvlc_alexnet.caffemodel --out alexnet-caffe.pt   # per-channel mean 104/117/123 (BGR)
  alexnet eval --checkpoint alexnet-caffe.pt --data /data/imagenet-256 --crops 1
  alexnet predict --checkpoint alexnet-torchvision.pt photo.jpg

The checkpoint records the network (caffe: the paper's two towers with Caffe's 227 input, no conv1
padding and LRN k=1), the 1,000 ImageNet classes and the preprocessing the weights expect, which
every command then uses. BVLC report 57.1% top-1 / 80.2% top-5 for bvlc_alexnet on centre crops.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "import", "turn torchvision's or BVLC Caffe's AlexNet weights into a checkpoint", EXAMPLES)
    p.add_argument("source", choices=["torchvision", "caffe"], help="who published the weights")
    p.add_argument("file", type=Path, help="torchvision: the .pth state_dict; caffe: the .caffemodel")
    p.add_argument("--mean", type=Path, help="caffe: the mean image, .npy (3x256x256 BGR) or .binaryproto "
                                             "(default: BVLC's per-channel mean)")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write (.pt)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..use.pretrained import import_caffe, import_torchvision

    out_file("--out", args.out, f"alexnet-{args.source}.pt", args.file, (".pt", ".pth"))
    if not args.file.is_file():
        raise UsageError(f"{args.file} not found; pass the weight file to import")
    start = time.perf_counter()
    if args.source == "torchvision":
        if args.mean is not None:
            raise UsageError(f"--mean {args.mean}: torchvision's weights use a fixed normalisation; drop --mean")
        summary = import_torchvision(args.file, args.out)
    else:
        summary = import_caffe(args.file, args.out, args.mean)
    print(json.dumps({**summary, "seconds": round(time.perf_counter() - start, 2)}))
    return 0
