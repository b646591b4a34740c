"""From a checkpoint to a ready network: the one way every command takes (``load_run``).

``load_run(path, overrides, data_path)`` reads a checkpoint once (``weights_only=True``) and
returns what ``eval``, ``figures``, ``export``, ``train --resume``, ``load_model`` and the
commands that use a trained network need: the resolved run config (the stored config, then the
command line's ``key=value`` overrides and ``--data``), the network in eval mode, the class list
and the evaluation preprocessing (``Pipeline``), plus the checkpoint itself for what training
restores. Using the network on a dataset goes through ``LoadedRun.pipeline_for(data)``, which
refuses, in one line, data whose classes are not the ones the network learned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, build_config
from ..data.pipeline import Pipeline, pipeline_for
from ..errors import UsageError
from ..nn.model import AlexNet
from .checkpoint import load_checkpoint, load_weights


@dataclass
class LoadedRun:
    """A checkpoint made ready to use; ``model`` is on the CPU in eval mode."""

    path: Path
    checkpoint: dict[str, Any]  # as stored: weights, config, classes, pipeline and training state
    config: RunConfig
    model: AlexNet
    classes: list[dict] | None  # [{"index", "wnid", "name"}], None where the checkpoint does not say
    pipeline: Pipeline | None  # evaluation's input; None where a checkpoint saved without one needs the data's
    #   statistics (a mean image): ``pipeline_for(data)``

    def pipeline_for(self, data) -> Pipeline:
        """The evaluation pipeline for ``data`` (refused unless it holds the classes the network
        learned): the stored one, or for a checkpoint saved without one, the one the config builds
        from ``data``'s statistics."""
        self.check_classes(data)
        return self.pipeline if self.pipeline is not None else _built_pipeline(self.config, data)

    def check_classes(self, data) -> None:
        """Refuse, in one line, to use this network on ``data`` whose classes it did not learn."""
        outputs, found = self.config.model.num_classes, len(data.classes)
        if outputs != found:
            stored = [c["wnid"] for c in self.classes or []]
            missing = [c for c in stored if c not in data.classes][:3]  # a val/ folder without a class, say
            which = f" (it lacks {', '.join(missing)})" if missing and len(missing) < len(stored) else ""
            raise UsageError(f"checkpoint {self.path} has {outputs} classes but the dataset has {found}{which}; "
                             "use it with the data it was trained on")
        if self.classes is None:
            return
        stored = [c["wnid"] for c in self.classes]
        if stored != list(data.classes):
            first = next((i for i, (c, d) in enumerate(zip(stored, data.classes)) if c != d), len(stored))
            there = repr(stored[first]) if first < len(stored) else "missing"
            raise UsageError(f"checkpoint {self.path} learned other classes than the dataset holds (class {first} "
                             f"is {there} there and {data.classes[first]!r} here); use it with the data it was "
                             "trained on")

    def check_names(self) -> None:
        """Refuse, in one line, a class list whose length is not the network's outputs (an edited checkpoint)."""
        outputs = self.config.model.num_classes
        if self.classes and len(self.classes) != outputs:
            raise UsageError(f"checkpoint {self.path} names {len(self.classes)} classes but its network has {outputs} "
                             "outputs; the file was changed: use one alexnet train or import wrote")

    def same_input(self, other: Pipeline, data) -> None:
        """Refuse, in one line, an ensemble member whose input is not ``other``'s (the first network's)."""
        mine = self.pipeline_for(data).state_dict()
        if not _same_state(mine, other.state_dict()):
            raise UsageError(f"checkpoint {self.path} was trained on other inputs than the first network (input "
                             "size, mean image or std differ); ensemble networks trained on the same prepared data")


def load_run(path: str | os.PathLike, overrides: list[str] = (), data_path: str | os.PathLike | None = None,
             map_location: str | torch.device = "cpu", keep_towers: bool = False) -> LoadedRun:
    """Read the checkpoint at ``path`` once and make its network ready (see the module docstring).
    ``overrides`` may change any config key; a ``model.*`` override that changes a layer's shape is
    refused in one line naming the layer. A run trained with ``model.tower_devices`` (the paper's
    two-device split) loads as the one-device ``groups=2`` network, the same weights and outputs,
    so it runs where those devices do not exist; ``keep_towers`` (resuming training) or a
    ``model.tower_devices`` override keeps the split."""
    if isinstance(overrides, str):  # iterated, its letters would each be an "override"
        raise TypeError(f"load_run takes overrides as a list of key=value strings; got the string {overrides!r}: "
                        f"pass [{overrides!r}]")
    overrides = list(overrides or ())
    ckpt = load_checkpoint(path, map_location)  # refuses what is not a file's path, in one line
    return loaded_from(ckpt, Path(path), overrides, data_path, keep_towers)


def loaded_from(ckpt: dict[str, Any], path: Path, overrides: list[str] = (),
                data_path: str | os.PathLike | None = None, keep_towers: bool = False) -> LoadedRun:
    """``load_run`` of a checkpoint already in memory (read from ``path``, or made from published weights)."""
    overrides = list(overrides)
    if not keep_towers and not any(o.split("=")[0].strip() == "model.tower_devices" for o in overrides):
        overrides.insert(0, "model.tower_devices=")
    config = build_config(ckpt.get("config", {}), overrides, data_path)
    model = AlexNet(config.model)
    load_weights(model, ckpt, path)
    return LoadedRun(path, ckpt, config, model.eval(), stored_classes(ckpt, config), stored_pipeline(ckpt, config))


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> AlexNet:
    """The network stored in any checkpoint, in eval mode."""
    return load_run(path, map_location=map_location).model


def stored_classes(ckpt: dict[str, Any], config: RunConfig) -> list[dict] | None:
    """The class list a training run or an import stored (``[{"index", "wnid", "name"}, ...]``); for a
    checkpoint saved without one (``save_checkpoint(path, model)``), CIFAR-10's ten when that is what
    the config trains on; else None."""
    if ckpt.get("classes"):
        return list(ckpt["classes"])
    if config.data.dataset == "cifar10" and config.model.num_classes == 10:
        from ..data.cifar.decode import CLASSES

        return [{"index": i, "wnid": c, "name": c} for i, c in enumerate(CLASSES)]
    return None


def stored_pipeline(ckpt: dict[str, Any], config: RunConfig) -> Pipeline | None:
    """The evaluation pipeline the checkpoint stored (already the windows it was tested through); for a
    checkpoint saved without one, CIFAR-10's (it needs no statistics of the data), else None (built from
    the data by ``LoadedRun.pipeline_for``)."""
    if ckpt.get("pipeline") is not None:
        return Pipeline.from_state(ckpt["pipeline"], config.train.channels_last)
    if config.data.dataset == "cifar10":
        return _built_pipeline(config, None)
    return None


def _built_pipeline(config: RunConfig, data) -> Pipeline:
    """The evaluation pipeline ``config`` builds (from ``data``'s statistics), seen through the last
    epochs' training windows."""
    return pipeline_for(config, data, training=False).as_tested(config.data, config.optim.epochs)


def _same_state(a: dict, b: dict) -> bool:
    def same(x, y):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x.shape == y.shape and torch.allclose(x.float(), y.float())
        return x == y
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
