"""The datasets a run can train on: uint8 images (in memory or in prepared shards) and labels.

``train_images`` / ``val_images`` are either a uint8 (N, 3, H, W) tensor (CIFAR-10, decoded
once into memory) or ``ShardImages`` over a prepared ImageNet folder, which decodes on demand.
Both are sliced the same way (``images[idx]`` -> a uint8 tensor), and ``batches`` yields the
training batches of one epoch from either, decoding shards in worker processes.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from ..runtime import Dist, main_first, worker_count
from .imagenet.shards import decode_on_device
from .subset import balanced_indices


@dataclass
class Dataset:
    train_images: torch.Tensor | ShardImages  # uint8 (N, 3, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    val_images: torch.Tensor | ShardImages
    val_labels: torch.Tensor
    classes: tuple[str, ...]  # class i's wnid or folder name (CIFAR-10: its name)
    stats: dict[str, torch.Tensor] | None = None  # prepared ImageNet: mean_image, covariance, eigval, eigvec
    names: tuple[str, ...] = ()  # class i's human name (classes.tsv ``name``); empty: the same as ``classes``

    def class_list(self) -> list[dict]:
        """What a checkpoint carries: ``[{"index", "wnid", "name"}, ...]`` ("wnid" is the folder name
        for a dataset whose classes are not ImageNet synsets)."""
        names = self.names or self.classes
        return [{"index": i, "wnid": c, "name": n} for i, (c, n) in enumerate(zip(self.classes, names))]


class ShardImages:
    """A split of prepared shards that slices like a uint8 tensor: ``images[idx]`` decodes those records."""

    def __init__(self, folder: Path):
        from .imagenet.shards import ShardReader

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
            workers: int = 0, ddp: Dist = Dist(), start: int = 0,
            decode: str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's (``ddp``'s) share of the full global batches of one epoch in ``order`` (the same
    order on every process), from batch ``start`` on (a resumed epoch): uint8 images and int64 labels
    on ``device``. Shards are decoded by ``workers`` processes (-1: this process's share of the
    machine's cores, ``worker_count``); ``decode="device"`` decodes JPEG shards on ``device`` instead."""
    if isinstance(images, torch.Tensor):
        for i in range(start, len(order) // batch):
            idx = batch_share(order, i, batch, ddp.rank, ddp.world)
            yield images[idx.to(images.device)], labels[idx].to(device, non_blocking=True)
        return
    workers = worker_count(workers if workers >= 0 else None, ddp.local_world)
    encoded = decode == "device" and images.reader.format == "jpeg"  # raw shards have nothing to decode
    epoch = _EpochBatches(images, order, batch, ddp.rank, ddp.world, start, encoded)
    loader = torch.utils.data.DataLoader(epoch, batch_size=None, shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if workers else None, persistent_workers=False,
                                         worker_init_fn=_ignore_stop_signals,
                                         # its own generator: a loader draws its workers' base seed from the
                                         # global one otherwise, which dropout uses, so a run resumed inside an
                                         # epoch would not repeat the dropout of the run it continues
                                         generator=torch.Generator().manual_seed(0))
    for x, y in loader:
        x = decode_on_device(x, device) if encoded else x.to(device, non_blocking=True)
        yield x, y.to(device, non_blocking=True)


def _ignore_stop_signals(worker_id: int) -> None:
    """Decode workers leave SIGTERM/SIGINT to the training process (Slurm and Ctrl-C signal the
    whole process group): it finishes its step and checkpoints while they keep serving batches."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def load_dataset(cfg, seed: int, ddp: Dist = Dist(), splits: tuple[str, ...] = ("train", "val")) -> Dataset:
    """The run's dataset for ``cfg`` (a ``config.DataConfig``). Under torchrun rank 0 loads it first
    (filling the CIFAR-10 cache, or preparing an ImageFolder given as ``data.path``) and the others
    then read what it wrote. ``splits``: the prepared splits needed (evaluation: ``("val",)``; a missing
    train split is then empty and without statistics)."""
    with main_first(ddp):
        if cfg.dataset == "cifar10":
            from .cifar.load import CLASSES, load_cifar10

            train, test = load_cifar10(cfg.path or None, limit=cfg.limit or None, seed=seed, val_limit=cfg.val_size)
            return Dataset(train.images, train.labels, test.images, test.labels, CLASSES)
        return load_prepared(cfg, seed, ddp, splits)


def load_prepared(cfg, seed: int, ddp: Dist = Dist(), splits: tuple[str, ...] = ("train", "val")) -> Dataset:
    """A folder written by ``alexnet prepare imagenet`` (shards, classes.tsv, stats.safetensors),
    or an image source that prepare takes (an ImageFolder, the ILSVRC-2012 files): that is
    prepared once into the cache and read from there."""
    root = Path(cfg.path).expanduser() if cfg.path else None
    if root is None:
        raise UsageError("data.dataset=imagenet needs --data DIR: a folder written by `alexnet prepare imagenet`, "
                         "or an ImageFolder (train/<class>/, val/<class>/) to prepare")
    if not (root / "classes.tsv").is_file():
        root = prepared_copy(root, ddp, cfg.resize)
    if not (root / "prepared.json").is_file():
        raise UsageError(f"{root} is not completely prepared (no prepared.json): re-run "
                         f"`alexnet prepare imagenet --src SRC --out {root}`; it resumes where it stopped")
    made = json.loads((root / "prepared.json").read_text()).get("resize", "center")
    if made != cfg.resize:
        raise UsageError(f"{root} was prepared with resize {made} but data.resize={cfg.resize} (a fine-tune takes "
                         f"its init's); prepare it with `alexnet prepare imagenet --resize {cfg.resize}`, or give "
                         "the photo folder itself")
    from safetensors.torch import load_file

    with open(root / "classes.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    classes, names = tuple(row["wnid"] for row in rows), tuple(row.get("name") or row["wnid"] for row in rows)
    for split in splits:
        if not (root / split / "manifest.tsv").is_file():
            need = "training needs both" if "train" in splits else "evaluation needs it"
            raise UsageError(f"{root} has no {split} split ({root / split} is missing): {need}; "
                             f"prepare a source with {split}/ images")
        _check_not_empty(root, split)
    if "train" in splits or (root / "train" / "manifest.tsv").is_file():
        train = ShardImages(root / "train")
    else:  # evaluating a folder of val/ photos alone
        train = torch.zeros(0, 3, 256, 256, dtype=torch.uint8)
    val = ShardImages(root / "val")
    train_labels = train.labels if isinstance(train, ShardImages) else torch.zeros(0, dtype=torch.int64)
    if cfg.limit and len(train_labels):
        train = train.subset(balanced_indices(train.labels, len(classes), cfg.limit, seed))
        train_labels = train.labels
    if cfg.val_size:
        val = val.subset(balanced_indices(val.labels, len(classes), cfg.val_size, seed))
    stats = load_file(str(root / "stats.safetensors")) if (root / "stats.safetensors").is_file() else None
    return Dataset(train, train_labels, val, val.labels, classes, stats, names)


def _check_not_empty(root: Path, split: str) -> None:
    """Refuse a prepared split that holds no image: every one was skipped (report.json says why)."""
    with open(root / split / "manifest.tsv", "rb") as f:
        if sum(1 for _ in f) > 1:  # the header and at least one image
            return
    try:
        skipped = [s for s in json.loads((root / "report.json").read_text())["skipped"] if s["split"] == split]
    except (OSError, ValueError, KeyError, TypeError):
        skipped = []
    why = f": all {len(skipped)} were skipped, e.g. {skipped[0]['source']}: {skipped[0]['reason']}" if skipped else ""
    raise UsageError(f"{root} has no {split} images{why}; see {root / 'report.json'} and fix the source's {split}/ "
                     "folder (its class folders must be named as train/'s)")


def prepared_copy(src: Path, ddp: Dist = Dist(), resize: str = "center") -> Path:
    """Where ``src`` (an ImageFolder or the ILSVRC-2012 files, not yet prepared) is prepared in the
    cache, ``$ALEXNET_DATA/prepared/<name>-<hash of its path>``. A lone process prepares it (a
    second run re-lists the source and reuses every finished shard); under torchrun it must be
    prepared beforehand."""
    import hashlib

    from ..files import cache_root
    from .imagenet.prepare import prepare_imagenet
    from .imagenet.sources import is_archive_name

    if src.is_file() and is_archive_name(src.name):
        raise UsageError(f"--data {src}: is an archive; extract it (tar xf, unzip) and pass the folder it makes: an "
                         "ImageFolder (train/<class>/, val/<class>/) or a folder written by `alexnet prepare imagenet`")
    if not src.is_dir():
        raise UsageError(f"--data {src}: no such folder; give a folder written by `alexnet prepare imagenet` or "
                         "an ImageFolder (train/<class>/, val/<class>/)")
    digest = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12]
    out = cache_root() / "prepared" / f"{src.resolve().name}-{digest}{'' if resize == 'center' else '-' + resize}"
    # under torchrun: hours for ILSVRC while the others wait, and other machines have other caches
    if not (out / "prepared.json").is_file() and ddp.world > 1:
        how = "" if resize == "center" else f" --resize {resize}"
        raise UsageError(f"--data {src} is not prepared: under torchrun prepare it first, once, on a disk every "
                         f"machine reads (`alexnet prepare imagenet --src {src} --out DIR{how}`), then train with "
                         "--data DIR")
    if ddp.main:
        how = "shorter side 256, centre 256x256" if resize == "center" else "the whole photo squashed to 256x256"
        print(f"preparing {src} into {out} ({how}, statistics); later runs reuse it, and `alexnet prepare "
              f"imagenet --src {src} --out DIR` does the same into a folder of your choice", file=sys.stderr)
        prepare_imagenet(src, out, resize=resize)
    return out
