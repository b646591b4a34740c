"""Export a checkpoint's network: weights alone as safetensors (the model config rides in the metadata)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .run import load_run
from .errors import UsageError
from .model import AlexNet, ModelConfig

FORMATS = ("safetensors",)
EXAMPLES = """examples:
  alexnet export --checkpoint runs/demo/checkpoints/best.pt --format safetensors --out alexnet-cifar10.safetensors
"""


def add_parser(commands) -> None:
    p = commands.add_parser("export", help="write a checkpoint's network in another format", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--format", default="safetensors", choices=list(FORMATS))
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(run=run)


def run(args) -> int:
    path = export(args.checkpoint, args.format, args.out)
    print(json.dumps({"format": args.format, "out": str(path)}))
    return 0


def export(checkpoint: Path, fmt: str, out: Path) -> Path:
    if fmt not in FORMATS:
        raise UsageError(f"export format {fmt!r} is not available yet; choose one of: {', '.join(FORMATS)}")
    model = load_run(checkpoint).model
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(out), metadata={"alexnet_model_config": json.dumps(dataclasses.asdict(model.config))})
    return out


def load_safetensors(path: Path) -> AlexNet:
    """The network from an exported .safetensors file (no pickle involved at all)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("alexnet_model_config", "{}"))
    model = AlexNet(ModelConfig(**config))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
