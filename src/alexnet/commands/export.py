"""``alexnet export``: write a checkpoint's network as ONNX, TorchScript or safetensors, checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UsageError
from ..use.export import FORMATS, TOLERANCE, export
from .common import add_parser as _parser
from .common import out_file

SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth"), "safetensors": (".safetensors",)}  # --out's names
AGREEMENT = 0.95  # int8's top-1 agreement with float32 below which the command warns

EXAMPLES = """examples:
  alexnet export --checkpoint runs/demo/checkpoints/best.pt --format onnx --out alexnet-cifar10.onnx
  alexnet export --checkpoint runs/demo/checkpoints/best.pt --format torchscript --out alexnet-cifar10.pt
  alexnet export --checkpoint runs/demo/checkpoints/best.pt --format safetensors --out alexnet-cifar10.safetensors

Every format also writes OUT.json (model config, classes, preprocessing; docs/commands.md#export).
The input is float32 (batch, 3, size, size) RGB after the preprocessing; the output is the logits.
The written file is run against PyTorch: exit 1 if its softmax differs by more than 1e-4.
  alexnet export --checkpoint best.pt --format onnx --quantize int8 --calibration photos/ --out alexnet-int8.onnx
int8: onnxruntime's static quantisation (int8 weights per channel, uint8 activations ranged on the
calibration photos); prints the top-1 agreement with the float32 network on those photos.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "export", "write a checkpoint's network in another format", EXAMPLES)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--format", default="safetensors", choices=list(FORMATS))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quantize", choices=["int8"], help="onnx: quantise to int8 (onnxruntime static quantisation)")
    p.add_argument("--calibration", type=Path, metavar="DIR",
                   help="with --quantize int8: photos whose activations set the int8 ranges (up to 256, read "
                        "through the network's preprocessing; photos like the ones it will see)")
    p.set_defaults(run=run)


def run(args) -> int:
    if (args.quantize is None) != (args.calibration is None):
        raise UsageError("--quantize int8 and --calibration DIR go together (the photos set the int8 ranges)")
    out_file("--out", args.out, f"model{SUFFIXES[args.format][0]}", args.checkpoint, SUFFIXES[args.format])
    result = export(args.checkpoint, args.format, args.out, args.calibration)
    print(json.dumps(result))
    if "top1_agreement" in result:
        if result["top1_agreement"] < AGREEMENT:
            print(f"warning: the int8 network agrees with float32 on {result['top1_agreement']:.1%} of the "
                  f"calibration images' top-1 (less than {AGREEMENT:.0%}); give more or more typical photos",
                  file=sys.stderr)
        return 0
    if result["max_abs_diff"] > TOLERANCE:
        print(f"warning: {args.out} differs from PyTorch by {result['max_abs_diff']:.2e} in softmax (more than "
              f"{TOLERANCE}); do not use it, and report the checkpoint's model config", file=sys.stderr)
        return 1
    return 0
