"""Export a checkpoint's network: weights alone as safetensors (the model config rides in the metadata)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .checkpoint import load_model
from .errors import UsageError
from .model import AlexNet, ModelConfig

FORMATS = ("safetensors",)


def export(checkpoint: Path, fmt: str, out: Path) -> Path:
    if fmt not in FORMATS:
        raise UsageError(f"export format {fmt!r} is not available yet; choose one of: {', '.join(FORMATS)}")
    model = load_model(checkpoint)
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
