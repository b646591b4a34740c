"""CIFAR-10 as uint8 tensors, from any accepted source, decoded once and then cached.

``load_cifar10(path)`` finds the source (``source.py``: an explicit path, the cache, the
mirror ``$ALEXNET_MIRROR`` or a download), decodes it once (``decode.py``) and caches it.

Decoded tensors are written to ``$ALEXNET_DATA/cifar10/<kind>-<hash>.pt``, the hash covering
the source's resolved path, sizes and modification times, so only the first use of a source
pays for decoding. The source found for ``path=None`` is also remembered as ``default.pt``
(a hard link where possible), so later calls skip the mirror look-up altogether.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from alexnet.data.cifar.decode import CLASSES, SIZE, Split, decode_source
from alexnet.data.cifar.source import DEFAULT_CACHE_NAME, SPLITS, TEST_BATCH, TRAIN_BATCHES, Source, cache_dir, resolve
from alexnet.data.decode import reason
from alexnet.data.subset import balanced_indices
from alexnet.errors import UsageError
from alexnet.files import atomic_link, atomic_write

CACHE_FORMAT = 1


def load_cifar10(path: str | None = None, limit: int | None = None, seed: int = 0,
                 val_limit: int | None = None) -> tuple[Split, Split]:
    """Return ``(train, test)`` CIFAR-10 splits from ``path`` or the default resolution order.

    ``limit=N`` keeps a seeded, class-balanced subset of N examples of the training split, and of
    the test split too unless ``val_limit`` is given (0: all test examples, N: N).
    """
    if limit is not None and limit < 1:
        raise UsageError(f"data limit must be a positive number of examples, got {limit}")
    train, test = _load_full(path)
    test_n = limit if val_limit is None else val_limit
    if limit is not None:
        train = _subset(train, limit, seed)
    if test_n:
        test = _subset(test, test_n, seed)
    return train, test


def _subset(split: Split, n: int, seed: int) -> Split:
    """A seeded class-balanced subset of ``n`` examples (``balanced_indices``), in seeded order."""
    if n >= len(split):
        return split
    order = balanced_indices(split.labels, len(CLASSES), n, seed)
    return Split(split.images[order].contiguous(), split.labels[order].contiguous())


def _load_full(path: str | None) -> tuple[Split, Split]:
    """Load both full splits: from a cache if one fits the source, else decode and cache."""
    source = resolve(path)
    if source.kind == "cache":
        splits = _read_cache(source.path)
        if splits is not None:
            return splits
        if path is not None:
            raise UsageError(f"{source.path}: not a readable alexnet CIFAR-10 cache file")
        source.path.unlink(missing_ok=True)  # a broken default cache: resolve afresh
        source = resolve(None)
    cache_file = cache_dir() / f"{_cache_key(source)}.pt"
    splits = _read_cache(cache_file) if cache_file.is_file() else None
    if splits is None:
        splits = decode_source(source, cache_file)
        _write_cache(cache_file, splits, source)
    if path is None:
        _remember_default(cache_file)
    return splits


def _cache_key(source: Source) -> str:
    """A file name stem naming the source's kind and a hash of its path, sizes and mtimes."""
    digest = hashlib.sha1(str(source.path.resolve()).encode())
    for item in _fingerprint_paths(source):
        stat = item.stat()
        digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return f"{source.kind}-{digest.hexdigest()[:12]}"


def _fingerprint_paths(source: Source) -> list[Path]:
    """The files and folders whose stat identifies a source's content (folder mtimes change
    when files are added, removed or renamed inside them)."""
    if source.kind == "batches-dir":
        return [source.path / name for name in (*TRAIN_BATCHES, TEST_BATCH)]
    if source.kind == "folder-dir":
        splits = [source.path / s for s in SPLITS]
        return [source.path, *splits, *(d for s in splits for d in sorted(s.iterdir()) if d.is_dir())]
    return [source.path]


def _read_cache(path: Path) -> tuple[Split, Split] | None:
    """Load a cache file written by ``_write_cache``; ``None`` (with a note) if it is unusable."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        splits = tuple(Split(blob[f"{s}_images"], blob[f"{s}_labels"]) for s in SPLITS)
        for split in splits:
            _check_split(split)
    except Exception as error:  # torch.load raises many types for a damaged or foreign file
        print(f"ignoring unusable cache {path} ({reason(error)})", file=sys.stderr)
        return None
    return splits[0], splits[1]


def _check_split(split: Split) -> None:
    """Raise ValueError unless ``split`` has the documented dtypes and shapes."""
    images, labels = split.images, split.labels
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
        raise ValueError(f"images are {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise ValueError(f"labels are {labels.dtype} {tuple(labels.shape)}")


def _write_cache(path: Path, splits: tuple[Split, Split], source: Source) -> None:
    """Write the decoded splits atomically (temp file + rename); warn instead of failing."""
    blob = {"format": CACHE_FORMAT, "source": str(source.path), "kind": source.kind}
    for name, split in zip(SPLITS, splits):
        blob[f"{name}_images"], blob[f"{name}_labels"] = split.images, split.labels
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda out: torch.save(blob, out))
    except OSError as error:
        print(f"could not write the CIFAR-10 cache {path} ({error}); it will be decoded again next time",
              file=sys.stderr)


def _remember_default(cache_file: Path) -> None:
    """Make ``default.pt`` name the same cache (hard link, else a copy), atomically."""
    default = cache_file.with_name(DEFAULT_CACHE_NAME)
    if not cache_file.is_file() or (default.exists() and default.samefile(cache_file)):
        return
    try:
        atomic_link(cache_file, default)
    except OSError as error:
        print(f"could not write {default} ({error})", file=sys.stderr)
