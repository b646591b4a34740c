"""The datasets a run can train on: uint8 images (in memory or in prepared shards) and labels.

``train_images`` / ``val_images`` are either a uint8 (N, 3, H, W) tensor (CIFAR-10, decoded
once into memory) or ``ShardImages`` over a prepared ImageNet folder, which decodes on demand.
Both are sliced the same way (``images[idx]`` -> a uint8 tensor), and ``batches`` yields the
training batches of one epoch from either, decoding shards in worker processes.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..config import DataConfig
from ..errors import UsageError
from .shards import decode_on_device


@dataclass
class Dataset:
    train_images: torch.Tensor | ShardImages  # uint8 (N, 3, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    val_images: torch.Tensor | ShardImages
    val_labels: torch.Tensor
    classes: tuple[str, ...]
    stats: dict[str, torch.Tensor] | None = None  # prepared ImageNet: mean_image, eigval, eigvec


class ShardImages:
    """A split of prepared shards that slices like a uint8 tensor: ``images[idx]`` decodes those records."""

    def __init__(self, folder: Path):
        from .shards import ShardReader

        self.reader = ShardReader(folder)
        self.indices = torch.arange(len(self.reader))
        self.labels = self.reader.labels

    def subset(self, indices: torch.Tensor) -> ShardImages:
        """The records at ``indices`` (same reader, no second read of the shard indexes)."""
        part = object.__new__(ShardImages)
        part.reader, part.indices, part.labels = self.reader, self.indices[indices], self.labels[indices]
        return part

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx) -> torch.Tensor:
        return self.reader.read_many(self.indices[idx].tolist())

    def encoded(self, idx) -> list[torch.Tensor]:
        """The JPEG bytes of the records at ``idx``, undecoded."""
        return self.reader.read_encoded(self.indices[idx].tolist())


class _EpochBatches(torch.utils.data.Dataset):
    """Item i is batch ``start + i`` of the epoch's order: decoded together in one worker (or, with
    ``encoded``, read as JPEG bytes for ``decode_on_device``)."""

    def __init__(self, images: ShardImages, order: torch.Tensor, batch: int, rank: int, world: int,
                 start: int = 0, encoded: bool = False):
        self.images, self.order, self.batch, self.rank, self.world = images, order, batch, rank, world
        self.start, self.encoded = start, encoded

    def __len__(self) -> int:
        return len(self.order) // self.batch - self.start

    def __getitem__(self, i: int):
        idx = batch_share(self.order, self.start + i, self.batch, self.rank, self.world)
        if self.encoded:
            return self.images.encoded(idx), self.images.labels[idx]
        return self.images[idx], self.images.labels[idx]


def batch_share(order: torch.Tensor, i: int, batch: int, rank: int, world: int) -> torch.Tensor:
    """This process's part of global batch ``i``: every world-th index of it from ``rank``."""
    return order[i * batch:(i + 1) * batch][rank::world]


def batches(images, labels: torch.Tensor, order: torch.Tensor, batch: int, device: torch.device, *,
            workers: int = 0, rank: int = 0, world: int = 1, start: int = 0,
            decode: str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of the full global batches of one epoch in ``order`` (the same order on
    every process), from batch ``start`` on (a resumed epoch): uint8 images and int64 labels on
    ``device``. ``decode="device"`` decodes JPEG shards on ``device`` instead of in the workers."""
    if isinstance(images, torch.Tensor):
        for i in range(start, len(order) // batch):
            idx = batch_share(order, i, batch, rank, world)
            yield images[idx.to(images.device)], labels[idx].to(device, non_blocking=True)
        return
    if workers < 0:  # all cores, shared among the processes torchrun started on this machine
        workers = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    encoded = decode == "device" and images.reader.format == "jpeg"  # raw shards have nothing to decode
    epoch = _EpochBatches(images, order, batch, rank, world, start, encoded)
    loader = torch.utils.data.DataLoader(epoch, batch_size=None, shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if workers else None, persistent_workers=False,
                                         worker_init_fn=_ignore_stop_signals)
    for x, y in loader:
        x = decode_on_device(x, device) if encoded else x.to(device, non_blocking=True)
        yield x, y.to(device, non_blocking=True)


def _ignore_stop_signals(worker_id: int) -> None:
    """Decode workers leave SIGTERM/SIGINT to the training process (Slurm and Ctrl-C signal the
    whole process group): it finishes its step and checkpoints while they keep serving batches."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    if cfg.dataset == "cifar10":
        from .cifar import CLASSES, load_cifar10

        train, test = load_cifar10(cfg.path or None, limit=cfg.limit or None, seed=seed)
        return Dataset(train.images, train.labels, test.images, test.labels, CLASSES)
    if cfg.dataset == "imagenet":
        return load_prepared(cfg, seed)
    raise UsageError(f"data.dataset must be cifar10 or imagenet; got {cfg.dataset!r}")


def load_prepared(cfg: DataConfig, seed: int) -> Dataset:
    """A folder written by ``alexnet prepare imagenet``: shards, classes.tsv and stats.safetensors."""
    root = Path(cfg.path) if cfg.path else None
    if root is None or not (root / "classes.tsv").is_file():
        raise UsageError(f"data.dataset=imagenet needs --data DIR, a folder written by `alexnet prepare imagenet` "
                         f"(with classes.tsv, train/, val/, stats.safetensors); got {cfg.path or 'no path'}")
    if not (root / "prepared.json").is_file():
        raise UsageError(f"{root} is not completely prepared (no prepared.json): re-run "
                         f"`alexnet prepare imagenet --src SRC --out {root}`; it resumes where it stopped")
    from safetensors.torch import load_file

    with open(root / "classes.tsv", newline="") as f:
        classes = tuple(row["wnid"] for row in csv.DictReader(f, delimiter="\t"))
    train, val = ShardImages(root / "train"), ShardImages(root / "val")
    if cfg.limit:
        train = train.subset(balanced_indices(train.labels, len(classes), cfg.limit, seed))
        val = val.subset(balanced_indices(val.labels, len(classes), cfg.limit, seed))
    stats = load_file(str(root / "stats.safetensors"))
    return Dataset(train, train.labels, val, val.labels, classes, stats)


def balanced_indices(labels: torch.Tensor, num_classes: int, n: int, seed: int) -> torch.Tensor:
    """A seeded subset of ``n`` indices, as even across classes as the classes allow, in seeded order."""
    if n >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    rank = torch.empty_like(shuffled)  # position of each example within its class, in shuffled order
    counts = torch.zeros(num_classes, dtype=torch.long)
    for i in shuffled.tolist():
        rank[i] = counts[labels[i]]
        counts[labels[i]] += 1
    by_round = sorted(shuffled.tolist(), key=lambda i: (int(rank[i]), int(labels[i])))
    picked = torch.tensor(by_round[:n])
    return picked[torch.randperm(n, generator=generator)]
