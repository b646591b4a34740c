"""``alexnet export``: write a checkpoint's network as ONNX, TorchScript or safetensors, checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..use.export import FORMATS, TOLERANCE, export
from .common import add_parser as _parser

EXAMPLES = """examples:
  alexnet export --checkpoint runs/demo/checkpoints/best.pt --format onnx --out alexnet-cifar10.onnx
  alexnet export --checkpoint runs/demo/checkpoints/best.pt --format torchscript --out alexnet-cifar10.pt
  alexnet export --checkpoint runs/demo/checkpoints/best.pt --format safetensors --out alexnet-cifar10.safetensors

Every format also writes OUT.json (model config, classes, preprocessing; docs/commands.md#export).
The input is float32 (batch, 3, size, size) RGB after the preprocessing; the output is the logits.
The written file is run against PyTorch: exit 1 if its softmax differs by more than 1e-4.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "export", "write a checkpoint's network in another format", EXAMPLES)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--format", default="safetensors", choices=list(FORMATS))
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(run=run)


def run(args) -> int:
    result = export(args.checkpoint, args.format, args.out)
    print(json.dumps(result))
    if result["max_abs_diff"] > TOLERANCE:
        print(f"warning: {args.out} differs from PyTorch by {result['max_abs_diff']:.2e} in softmax (more than "
              f"{TOLERANCE}); do not use it, and report the checkpoint's model config", file=sys.stderr)
        return 1
    return 0
