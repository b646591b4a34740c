"""Training on cached features (``train.cached_features``): a linear probe in seconds.

When only the last layers learn (``optim.trainable`` from fc6, fc7 or fc8 on), everything below them
is a fixed function of the image. So the frozen network's activations at the input of the first
learning layer (fc7's output for a linear probe that trains fc8 alone) are computed once for each
training image and its mirror image (the image alone with ``data.flip`` off) -- the centre window, as in
evaluation, without dropout -- and kept in the run folder (``features.safetensors``, keyed by what they
depend on: the frozen weights, the input, the data). The layers that learn then train on those rows for
as many epochs as asked, each epoch a pass over a small matrix. The result is an ordinary checkpoint of
the whole network, validated through the whole network.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ..config import trainable_layers
from ..errors import UsageError
from ..files import atomic_write
from ..nn.model import STAGES
from ..runtime import autocast


def first_learning(config) -> str:
    """The first layer that learns (``optim.trainable``): where the network on cached features starts."""
    return trainable_layers(config.optim.trainable)[0]


def cache_stage(config) -> str:
    """The tap whose activations feed the first learning layer: fc7 for fc8, fc6 for fc7, pool5 for fc6."""
    return STAGES[STAGES.index(first_learning(config)) - 1]


class CachedInput:
    """The training input of a run on cached features: each batch is used as it is (no augmentation)."""

    def for_epoch(self, data, epoch: int) -> CachedInput:
        return self

    def train(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x


class Head(torch.nn.Module):
    """The network from ``stage`` on (``AlexNet.forward_from``): what trains on cached features."""

    def __init__(self, model: torch.nn.Module, stage: str):
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(x, self.stage)


def features(t, data) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached rows of training run ``t`` (``loop.Training``) and their labels, on the CPU: from the run
    folder when they were computed for the same network, input and data, else computed and stored."""
    if t.ddp.world > 1:
        raise UsageError("train.cached_features computes its features in one process: run it without torchrun")
    stage = cache_stage(t.config)
    key = _key(t, data, stage)
    path = t.folder.features
    cached = _read(path, key)
    if cached is not None:
        t.ddp.log(f"features: {len(cached[1])} rows of {stage} from {path}")
        return cached
    tested = t.pipeline.as_tested(t.config.data, t.config.optim.epochs)
    rows, labels = compute(t.model, tested, data.train_images, data.train_labels, stage, t.device,
                           t.config.train.precision, t.config.data.eval_batch_size, views(t.config))
    blob = save({"features": rows.contiguous(), "labels": labels.contiguous()}, metadata={"key": key})
    atomic_write(path, lambda f: f.write(blob), fsync=False)
    t.ddp.log(f"features: {len(labels)} rows of {stage} ({rows.shape[1]} each) computed into {path}")
    return rows, labels


def views(config) -> int:
    """Rows per training image: the image and its mirror, or the image alone when ``data.flip`` is off
    (orientation matters: digits, text)."""
    return 2 if config.data.flip else 1


@torch.no_grad()
def compute(model, pipeline, images, labels: torch.Tensor, stage: str, device: torch.device, precision: str,
            batch: int, count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s activations at ``stage`` for each image and then (``count=2``) its mirror (rows 2i and
    2i + 1), the centre window through ``pipeline`` as in evaluation, in eval mode; float32 on the CPU, and
    the labels of the rows."""
    was_training, out = model.training, []
    model.eval()
    for start in range(0, len(labels), batch):
        x = pipeline.eval_inputs(images[torch.arange(start, min(start + batch, len(labels)))].to(device), count)[0]
        with autocast(device, precision):
            out.append(model.features(x, stage).float().flatten(1).cpu())
    model.train(was_training)
    return torch.cat(out), labels.repeat_interleave(count)


def _key(t, data, stage: str) -> str:
    """What the rows depend on: the frozen layers' weights, the input pipeline, the data, the precision."""
    d = t.config.data
    where = [d.dataset, str(Path(d.path).expanduser().resolve()) if d.path else "", d.limit, t.config.seed]
    digest = hashlib.sha256(json.dumps([stage, t.config.train.precision, views(t.config), len(data.train_labels),
                                        where]).encode())
    digest.update(data.train_labels.numpy().tobytes())
    n = len(data.train_labels)  # and a few of the images themselves: the same path may hold other photos now
    for i in sorted({0, n // 3, n // 2, n - 1}):
        digest.update(data.train_images[torch.tensor([i])].numpy().tobytes())
    for name, tensor in sorted(t.model.state_dict().items()):
        if name.split(".")[0] in STAGES[:STAGES.index(stage) + 1]:
            digest.update(name.encode() + tensor.detach().cpu().float().contiguous().numpy().tobytes())
    for name, value in sorted(t.pipeline.state_dict().items()):
        digest.update(name.encode() + (value.cpu().numpy().tobytes() if isinstance(value, torch.Tensor)
                                       else repr(value).encode()))
    return digest.hexdigest()[:24]


def _read(path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
        blob = load_file(str(path))
    except (SafetensorError, OSError):
        return None
    return blob["features"], blob["labels"]
