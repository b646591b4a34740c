"""The datasets a run can train on, as uint8 image tensors and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DataConfig
from ..errors import UsageError


@dataclass
class Dataset:
    train_images: torch.Tensor  # uint8 (N, 3, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    val_images: torch.Tensor
    val_labels: torch.Tensor
    classes: tuple[str, ...]


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    if cfg.dataset == "cifar10":
        from .cifar import CLASSES, load_cifar10

        train, test = load_cifar10(cfg.path or None, limit=cfg.limit or None, seed=seed)
        return Dataset(train.images, train.labels, test.images, test.labels, CLASSES)
    raise UsageError(f"data.dataset={cfg.dataset!r} is not supported yet; use data.dataset=cifar10")
