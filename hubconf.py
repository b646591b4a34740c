"""torch.hub entry point for this repository.

    model = torch.hub.load(REPO_DIR, "alexnet", source="local", checkpoint="runs/demo/checkpoints/best.pt")
    model = torch.hub.load(REPO_DIR, "alexnet", source="local")  # the paper's untrained network

Works without installing the package: ``src/`` is put on ``sys.path`` when ``alexnet`` is not importable.
"""

import dataclasses
import importlib.util
import sys
from pathlib import Path

dependencies = ["torch", "torchvision"]

if importlib.util.find_spec("alexnet") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))


def alexnet(checkpoint=None, **config):
    """The network of an ``alexnet train`` checkpoint (read through ``load_run``, eval mode, CPU), or
    without one the paper's untrained ``AlexNet(ModelConfig(**config))`` (``ModelConfig()`` by default,
    training mode like any new nn.Module)."""
    from alexnet import AlexNet, ModelConfig, load_run
    from alexnet.errors import UsageError

    if checkpoint is None:
        if "pretrained" in config or "weights" in config:  # torchvision's keywords: nothing is downloaded here
            raise UsageError("hub alexnet: no weights are downloaded; pass checkpoint=PATH (a run's .pt, or "
                             "`alexnet import torchvision alexnet-owt-7be5be79.pth --out CKPT`)")
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(ModelConfig)})
        if unknown:
            raise UsageError(f"hub alexnet: unknown option(s) {', '.join(unknown)}; it takes checkpoint=PATH or "
                             f"ModelConfig's {', '.join(f.name for f in dataclasses.fields(ModelConfig))}")
        return AlexNet(ModelConfig(**config))
    if config:
        raise UsageError(f"hub alexnet: a checkpoint carries its own model config; drop {', '.join(sorted(config))}")
    return load_run(checkpoint).model
