"""Checkpoints: one self-describing dict, written atomically, read without unpickling code.

A checkpoint holds ``format`` (``FORMAT``), ``config`` (the resolved run config as plain data),
``model`` (state_dict of the unwrapped model) and, from training or an import, ``classes`` and
``pipeline`` (the evaluation input, ``Pipeline.state_dict``); training adds ``optimizer``,
``schedule``, ``scaler``, ``progress``, ``data`` and ``ranks`` (``train/state.py``). Everything is
tensors, numbers, strings, lists and dicts, so ``torch.load(..., weights_only=True)`` reads it.
Checkpoints of the older format are read through ``upgrade``, the one place that knows it.
``runs.load.load_run`` turns a checkpoint into a ready network.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..files import atomic_write
from ..nn.model import AlexNet
from ..runtime import gpus_beyond, unwrap

FORMAT = "alexnet-checkpoint-v2"
V1 = "alexnet-checkpoint-v1"  # read through ``upgrade``
PIPELINE_KEYS = {"kind", "size", "stored", "padding", "flip", "mean", "mean_kind", "std", "resize"}  # Pipeline.state_dict


def save_checkpoint(path: str | os.PathLike, model: AlexNet, config: dict[str, Any] | None = None, **state) -> Path:
    """Write ``model`` (and any training ``state``) to ``path`` atomically: temp file, fsync, rename."""
    if isinstance(path, torch.nn.Module):
        raise TypeError("save_checkpoint(path, model): the path comes first; got the network in its place")
    if not isinstance(unwrap(model), AlexNet):
        raise TypeError(f"save_checkpoint writes an AlexNet; got {type(model).__name__}: build the network with "
                        "AlexNet(ModelConfig(...)) and load its weights into it")
    path = _path(path, "save_checkpoint")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give save_checkpoint a file name, e.g. {path / 'model.pt'}")
    payload = checkpoint_dict(model, config, **state)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: torch.save(payload, f))


def checkpoint_dict(model: AlexNet, config: dict[str, Any] | None = None, **state) -> dict[str, Any]:
    """What ``save_checkpoint`` writes, in memory: the format, the config (its ``model`` section from the
    network when not given), the unwrapped model's state_dict and ``state``."""
    config = dict(config or {})
    config.setdefault("model", dataclasses.asdict(unwrap(model).config))
    return {"format": FORMAT, "config": config, "model": unwrap(model).state_dict(), **state}


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; anything else is refused with a clear message."""
    path = _path(path, "load_checkpoint")
    _check_location(map_location)
    if path.is_dir():
        inside = path / "checkpoints" / "last.pt"
        example = inside if inside.is_file() else path / "checkpoints" / "last.pt"
        raise UsageError(f"checkpoint {path} is a folder; pass the .pt file, e.g. {example}")
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found; pass the .pt file a training run wrote (RUN_DIR/checkpoints/last.pt)")
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (or, long ago, a pickle)
        raise UsageError(f"{path} is not a PyTorch checkpoint (it starts with bytes {head.hex() or 'none'}); pass a "
                         ".pt file written by alexnet train or alexnet import")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UsageError(unpickling_refusal(f"checkpoint {path}", err)) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UsageError(f"checkpoint {path} is unreadable or truncated ({type(err).__name__}); use another checkpoint") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        hint = (" (a plain state_dict: for torchvision's AlexNet weights run alexnet import torchvision FILE --out "
                "CKPT first)" if isinstance(ckpt, dict) and "classifier.6.weight" in ckpt else "")
        if isinstance(ckpt, dict) and "fc8.weight" in ckpt:  # torch.save(model.state_dict(), path)
            hint = (" (a bare state_dict of the network: load it with model.load_state_dict(torch.load(path, "
                    "weights_only=True)), or write a checkpoint with save_checkpoint(path, model))")
        raise UsageError(f"checkpoint {path} is not an alexnet checkpoint (no 'model' entry){hint}; pass a .pt file "
                         "written by alexnet train or alexnet import")
    return _checked_entries(upgrade(ckpt, path), path)


def _path(path, caller: str) -> Path:
    """``path`` as a Path, or a one-line TypeError naming what was passed instead of a file's path."""
    if not isinstance(path, (str, os.PathLike)):
        what = "a network" if isinstance(path, torch.nn.Module) else f"{type(path).__name__} {path!r:.40}"
        raise TypeError(f"{caller} takes the path of a .pt file (str or pathlib.Path); got {what}")
    return Path(path)


def _check_location(map_location) -> None:
    """Refuse a ``map_location`` device that does not exist here, before the file is read (torch's own error
    would read as a damaged file)."""
    if not isinstance(map_location, (str, torch.device)):
        return  # a dict or a function: torch.load's own forms
    try:
        device = torch.device(map_location)
    except RuntimeError:
        raise UsageError(f"map_location={map_location!r} is not a device torch knows; use 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"map_location={map_location!r} but no CUDA GPU is visible; use 'cpu'")
    if shown := gpus_beyond(device):
        raise UsageError(f"map_location={map_location!r} but this machine shows {shown}: name one of them, or 'cpu'")


def unpickling_refusal(what: str, err: Exception) -> str:
    """The one-line refusal of a file that ``weights_only`` loading cannot read: it holds Python objects (a
    whole pickled model, say), named from torch's message, and what to save instead."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    holds = f"it holds a pickled {found.group(1)}" if found else type(err).__name__
    return (f"{what} refused: it needs arbitrary unpickling, which could run code ({holds}); save the weights alone "
            "(torch.save(model.state_dict(), FILE)) and, for torchvision's AlexNet, alexnet import torchvision FILE")


def _checked_entries(ckpt: dict[str, Any], path) -> dict[str, Any]:
    """``ckpt`` whose entries have the types this format stores, or a one-line refusal naming the first that does
    not (a checkpoint edited or written by another program)."""
    classes, pipeline = ckpt.get("classes"), ckpt.get("pipeline")
    bad = next((name for name, ok in (
        ("model", isinstance(ckpt["model"], dict) and all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())),
        ("config", isinstance(ckpt.get("config", {}), dict)),
        ("classes", classes is None or (isinstance(classes, list) and all(
            isinstance(c, dict) and {"wnid", "name"} <= c.keys() for c in classes))),
        ("pipeline", pipeline is None or (isinstance(pipeline, dict) and PIPELINE_KEYS <= pipeline.keys())),
    ) if not ok), None)
    if bad:
        raise UsageError(f"checkpoint {path}: its {bad!r} entry is not what alexnet stores ({type(ckpt[bad]).__name__}"
                         f"); the file was changed or written by another program: use one alexnet train or import wrote")
    return ckpt


def upgrade(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """``ckpt`` in this format (``FORMAT``). The older one, v1, differs in three places: validation views
    were ``train.eval_flip`` with ``train.eval_crops`` 0 meaning "1, or 2 with eval_flip"; fc8's classes
    left to the data were ``model.num_classes`` 0; a pipeline's mean kind was read from the mean's shape,
    and its ``stored`` side and ``resize`` could be missing (the mean image's side or the input size;
    the centre square)."""
    found = ckpt.get("format")
    if found == FORMAT:
        return ckpt
    if found is None:
        raise UsageError(f"checkpoint {path} is not an alexnet checkpoint (no 'format' entry: another program wrote "
                         "it); pass a .pt file written by alexnet train or alexnet import")
    if found != V1:
        raise UsageError(f"checkpoint {path} has format {found!r}, which this version does not read (it reads "
                         f"{FORMAT} and {V1}); use the alexnet version that wrote it")
    config = ckpt.get("config", {})
    train = config.get("train", {})
    flip = train.pop("eval_flip", False)
    if not train.get("eval_crops"):
        train["eval_crops"] = 2 if flip else 1
    if config.get("model", {}).get("num_classes") == 0:
        del config["model"]["num_classes"]
    pipeline = ckpt.get("pipeline")
    if pipeline is not None:
        image = pipeline["mean"].shape[-1] > 1
        pipeline["mean_kind"] = "image" if image else "channel"
        pipeline["stored"] = int(pipeline.get("stored") or (pipeline["mean"].shape[-1] if image else pipeline["size"]))
        pipeline.setdefault("resize", "center")
        if pipeline.get("kind") == "cifar10":  # CIFAR-10 images are 32x32 whatever the network's input size
            pipeline["stored"] = max(pipeline["stored"], 32)
        _as_tested_v1(pipeline, config)
    _pad_sums_v1(ckpt)
    return {**ckpt, "format": FORMAT}


def _as_tested_v1(pipeline: dict, config: dict) -> None:
    """Some v1 checkpoints stored the training pipeline; v1 loading tested through the last training epoch's
    windows (``Pipeline.as_tested``): low-resolution windows without padding when they ran to the end."""
    data, epochs = config.get("data", {}), config.get("optim", {}).get("epochs", 0)
    size, until = data.get("low_res_size", 0), data.get("low_res_epochs", 0)
    if size and until >= epochs:
        pipeline["size"], pipeline["padding"] = int(size), 0


def _pad_sums_v1(ckpt: dict) -> None:
    """Mid-epoch v1 checkpoints of before the four running sums of an epoch (``train.state.EPOCH_SUMS``)
    held two per process: the others start at 0."""
    for rank in ckpt.get("ranks") or ():
        if isinstance(rank, dict) and isinstance(rank.get("sums"), list | tuple) and len(rank["sums"]) < 4:
            rank["sums"] = [*rank["sums"], *[0.0] * (4 - len(rank["sums"]))]


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
