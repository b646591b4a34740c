"""Checkpoints: one self-describing dict, written atomically, read without unpickling code.

A checkpoint holds ``format``, ``config`` (the resolved run config as plain data), ``model``
(state_dict of the unwrapped model) and, from training, ``optimizer``, ``schedule``,
``scaler``, ``progress``, ``data`` and ``ranks`` (see ``resume.py``). Everything is tensors, numbers,
strings, lists and dicts, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError
from .model import AlexNet, ModelConfig

FORMAT = "alexnet-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, model: AlexNet, config: dict[str, Any] | None = None, **state) -> Path:
    """Write ``model`` (and any training ``state``) to ``path`` atomically: temp file, fsync, rename."""
    path = Path(path)
    config = dict(config or {})
    config.setdefault("model", dataclasses.asdict(unwrap(model).config))
    payload = {"format": FORMAT, "config": config, "model": unwrap(model).state_dict(), **state}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; anything else is refused with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found; pass the .pt file a training run wrote (RUN_DIR/checkpoints/last.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"checkpoint {path} refused: it needs arbitrary unpickling, which could run code ({first})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UsageError(f"checkpoint {path} is unreadable or truncated ({type(err).__name__}); use another checkpoint") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UsageError(f"checkpoint {path} is not an alexnet checkpoint (no 'model' entry)")
    return ckpt


def model_config(ckpt: dict[str, Any]) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    stored = ckpt.get("config", {}).get("model", {})
    return ModelConfig(**{k: v for k, v in stored.items() if k in fields})


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> AlexNet:
    """The network stored in any checkpoint, in eval mode."""
    return model_from(load_checkpoint(path, map_location), path)


def model_from(ckpt: dict[str, Any], path: str | os.PathLike) -> AlexNet:
    """The network a loaded checkpoint (read from ``path``) holds, in eval mode."""
    model = AlexNet(model_config(ckpt))
    load_weights(model, ckpt, path)
    return model.eval()


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Load ``ckpt``'s weights into ``model``, or refuse naming the first layer whose shape differs."""
    own = unwrap(model).state_dict()
    for key, value in ckpt["model"].items():
        if key in own and own[key].shape != value.shape:
            raise UsageError(f"checkpoint {path} does not fit the requested model: {key} is {tuple(value.shape)} "
                             f"in the checkpoint but {tuple(own[key].shape)} here (check model.num_classes / model.*)")
    try:
        unwrap(model).load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise UsageError(f"checkpoint {path} does not fit the requested model: {str(err).splitlines()[0]}") from None


def checkpoint_classes(ckpt: dict[str, Any]) -> list[dict] | None:
    """The class list a training run stored (``[{"index", "wnid", "name"}, ...]``); for checkpoints
    without one, CIFAR-10's ten when that is what the run trained on; else None."""
    classes = ckpt.get("classes")
    if classes:
        return list(classes)
    if ckpt.get("config", {}).get("data", {}).get("dataset", "cifar10") == "cifar10" and \
            model_config(ckpt).num_classes == 10:
        from .data.cifar import CLASSES

        return [{"index": i, "wnid": c, "name": c} for i, c in enumerate(CLASSES)]
    return None


def check_classes(ckpt: dict[str, Any], path: str | os.PathLike, data) -> None:
    """Refuse, in one line, to use ``ckpt`` on ``data`` whose classes are not the ones it learned."""
    outputs = model_config(ckpt).num_classes
    if outputs != len(data.classes):
        raise UsageError(f"checkpoint {path} has {outputs} classes but the dataset has {len(data.classes)}; "
                         "use it with the data it was trained on")
    stored = checkpoint_classes(ckpt)
    if stored is not None and [c["wnid"] for c in stored] != list(data.classes):
        first = next((i for i, (c, d) in enumerate(zip(stored, data.classes)) if c["wnid"] != d), len(stored))
        there = repr(stored[first]["wnid"]) if first < len(stored) else "missing"
        raise UsageError(f"checkpoint {path} learned other classes than the dataset holds (class {first} is "
                         f"{there} there and {data.classes[first]!r} here); use it with the data it was "
                         "trained on")


def eval_pipeline(ckpt: dict[str, Any], config, data):
    """The evaluation input pipeline a checkpoint was trained with (its stored statistics), or,
    for checkpoints written before they stored one, the one ``config`` builds from ``data``."""
    from .data.pipeline import Pipeline, pipeline_for

    state = ckpt.get("pipeline")
    if state is not None:
        return Pipeline.from_state(state, config.train.channels_last)
    return pipeline_for(config, data, training=False)


def ensemble_member(ckpt: dict[str, Any], path: str | os.PathLike, data, pipeline) -> AlexNet:
    """Another network of an ``eval --ensemble``, in eval mode: refused in one line unless it learned
    ``data``'s classes and takes the input ``pipeline`` (the first network's) makes."""
    from .config import build_config

    check_classes(ckpt, path, data)
    theirs = eval_pipeline(ckpt, build_config(ckpt.get("config", {}), []), data).state_dict()
    if not _same_state(theirs, pipeline.state_dict()):
        raise UsageError(f"checkpoint {path} was trained on other inputs than the first network (input size, mean "
                         "image or std differ); ensemble networks trained on the same prepared data")
    return model_from(ckpt, path)


def _same_state(a: dict, b: dict) -> bool:
    def same(x, y):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x.shape == y.shape and torch.allclose(x.float(), y.float())
        return x == y
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
