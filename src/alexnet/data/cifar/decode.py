"""Decoding CIFAR-10 from any source ``source.py`` recognised into uint8 ``Split`` s.

The official batches are pickles: ``_SafeUnpickler`` rebuilds numpy arrays and nothing else.
ImageFolder trees and tarballs are decoded in chunks by a pool of worker processes (one per usable
core, at most 16); an image that is not 32x32 is resized (antialiased), an unreadable one is
skipped and named on stderr.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import io
import pickle
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from alexnet.data.cifar.source import ACCEPTED, SPLITS, TEST_BATCH, TRAIN_BATCHES, Source, member_parts
from alexnet.data.decode import decode_rgb, is_image_name, is_skipped_folder, quiet_decoders, reason
from alexnet.data.pool import make_pool
from alexnet.errors import UsageError
from alexnet.runtime import worker_count

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SIZE = 32
_CHUNK = 1024  # images per decode task
_MAX_WORKERS = 16  # beyond this, reading the archive is the bottleneck


@dataclass
class Split:
    """One split of the data set: images as uint8 NCHW and labels as int64 class indices."""

    images: torch.Tensor  # uint8, (N, 3, 32, 32), contiguous
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def decode_source(source: Source, cache_file: Path) -> tuple[Split, Split]:
    """Decode any non-cache source into full uint8 splits, with a note on stderr."""
    print(f"decoding CIFAR-10 from {source.path} (first use; cached as {cache_file})", file=sys.stderr)
    start = time.perf_counter()
    decoders = {
        "batches-tar": _decode_batches_tar,
        "batches-dir": _decode_batches_dir,
        "folder-tar": _decode_folder_tar,
        "folder-dir": _decode_folder_dir,
    }
    train, test = decoders[source.kind](source.path)
    print(f"decoded {len(train):,} train + {len(test):,} test images in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return train, test


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler for the official batches that can only rebuild numpy arrays."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays re-pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2 (text -> bytes only)
    })

    def find_class(self, module: str, name: str):
        """Return the allowed numpy callable, or refuse anything else."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module in ("numpy", "_codecs"):
            return getattr(importlib.import_module(module), name)
        submodule = module.rsplit(".", 1)[1]
        try:
            return getattr(importlib.import_module(f"numpy._core.{submodule}"), name)
        except ImportError:  # numpy 1.x
            return getattr(importlib.import_module(f"numpy.core.{submodule}"), name)


def _unpickle_batch(data: bytes, where: str) -> Split:
    """One official python batch (rows of R, G, B planes of 32x32) as a Split."""
    try:
        batch = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
        images = np.array(batch[b"data"], dtype=np.uint8).reshape(-1, 3, SIZE, SIZE)
        labels = np.array(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError, AttributeError) as error:
        raise UsageError(f"{where}: not a CIFAR-10 python batch ({reason(error)})") from None
    in_range = labels.min(initial=0) >= 0 and labels.max(initial=0) < len(CLASSES)
    if labels.shape != (images.shape[0],) or not in_range:
        raise UsageError(f"{where}: labels do not match the images or are outside 0..9")
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def _splits_from_batches(blobs: dict[str, bytes], where: Path) -> tuple[Split, Split]:
    """Train (data_batch_1..5) and test (test_batch) splits from raw batch bytes."""
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in blobs]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)}; {ACCEPTED}")
    parts = [_unpickle_batch(blobs[n], f"{where}:{n}") for n in TRAIN_BATCHES]
    train = Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    return train, _unpickle_batch(blobs[TEST_BATCH], f"{where}:{TEST_BATCH}")


def _decode_batches_tar(path: Path) -> tuple[Split, Split]:
    """Read the six batches straight from the official tarball."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH}
    blobs = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                name = PurePosixPath(member.name).name
                if member.isfile() and name in wanted:
                    blobs[name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UsageError(f"{path}: cannot read the archive ({reason(error)})") from None
    return _splits_from_batches(blobs, path)


def _decode_batches_dir(path: Path) -> tuple[Split, Split]:
    """Read the six batches from an extracted cifar-10-batches-py folder."""
    try:
        blobs = {n: (path / n).read_bytes() for n in (*TRAIN_BATCHES, TEST_BATCH)}
    except OSError as error:
        raise UsageError(f"{path}: cannot read the batches ({reason(error)})") from None
    return _splits_from_batches(blobs, path)


def _decode_folder_dir(root: Path) -> tuple[Split, Split]:
    """Decode an ImageFolder tree ``root/{train,test}/<class>/*``."""
    with _Decoder() as decoder:
        for split in SPLITS:
            folder = root / split
            classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not is_skipped_folder(d.name))
            _check_classes(classes, folder)
            for label, name in enumerate(classes):
                for file in sorted((folder / name).iterdir()):
                    if file.is_file() and is_image_name(file.name):
                        _add_file(decoder, split, label, file, root.parent)
        return decoder.finish(root)


def _add_file(decoder: _Decoder, split: str, label: int, file: Path, base: Path) -> None:
    """Queue one image file, or record it as unreadable."""
    name = str(file.relative_to(base))
    try:
        decoder.add(split, name, label, file.read_bytes())
    except OSError as error:
        decoder.failures.append((name, reason(error)))


def _decode_folder_tar(path: Path) -> tuple[Split, Split]:
    """Decode an ImageFolder tarball (``[top/]{train,test}/<class>/*``) without extracting it."""
    found: dict[str, set[str]] = {s: set() for s in SPLITS}
    with _Decoder() as decoder:
        try:
            for split, class_name, name, data in _tar_images(path):
                found[split].add(class_name)
                if class_name in CLASSES:
                    decoder.add(split, name, CLASSES.index(class_name), data)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UsageError(f"{path}: cannot read the archive ({reason(error)})") from None
        for split in SPLITS:
            _check_classes(sorted(found[split]), f"{path}:{split}/")
        return decoder.finish(path)


def _tar_images(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """Yield ``(split, class folder, member name, bytes)`` for image members of a tarball."""
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            parts = member_parts(member.name)
            if len(parts) < 3 or parts[-3] not in SPLITS or not member.isfile():
                continue
            if not is_image_name(parts[-1]):
                continue
            yield parts[-3], parts[-2], member.name, archive.extractfile(member).read()




def _check_classes(found: list[str], where: Path | str) -> None:
    """Raise UsageError unless the class folders are exactly the CIFAR-10 classes."""
    if tuple(found) != CLASSES:
        shown = ", ".join(found[:12]) + (f", ... ({len(found)} in all)" if len(found) > 12 else "")
        raise UsageError(f"{where}: class folders [{shown}] do not match the CIFAR-10 classes "
                         f"[{', '.join(CLASSES)}]; to train on another ImageFolder use --recipe imagenet "
                         "(or data.dataset=imagenet with your recipe)")


class _Decoder:
    """Decodes encoded images per split in chunks, in worker processes once a chunk is full.

    Small inputs (under one chunk per split) decode in this process, so tests never fork. If
    the pool cannot start or a worker dies, the affected chunks decode in this process.
    """

    def __init__(self) -> None:
        self._pool: concurrent.futures.Executor | None = None
        self._pool_failed = False
        self._pending: dict[str, list] = {s: [] for s in SPLITS}
        self._jobs: dict[str, list] = {s: [] for s in SPLITS}  # (chunk, Future | None)
        self.failures: list[tuple[str, str]] = []

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, split: str, name: str, label: int, data: bytes) -> None:
        """Queue one encoded image."""
        pending = self._pending[split]
        pending.append((name, label, data))
        if len(pending) >= _CHUNK:
            self._submit(split)

    def _submit(self, split: str) -> None:
        chunk, self._pending[split] = self._pending[split], []
        if not chunk:
            return
        job = None
        pool = self._get_pool() if len(chunk) >= _CHUNK else self._pool
        if pool is not None:
            try:
                job = pool.submit(_decode_chunk, chunk)
            except (concurrent.futures.BrokenExecutor, OSError, RuntimeError):
                job = None  # decoded in this process by _collect
        self._jobs[split].append((chunk, job))

    def _get_pool(self) -> concurrent.futures.Executor | None:
        """The worker pool, started on first need; ``None`` for one CPU or if it cannot start."""
        if self._pool is None and not self._pool_failed and _worker_count() > 1:
            try:
                self._pool = make_pool(_worker_count())
            except (OSError, NotImplementedError, ValueError) as error:
                print(f"decoding in one process (no worker pool: {reason(error)})", file=sys.stderr)
                self._pool_failed = True
        return self._pool

    def finish(self, where: Path | str) -> tuple[Split, Split]:
        """Wait for all chunks; report skipped images on stderr; return (train, test)."""
        for split in SPLITS:
            self._submit(split)
        splits = {s: self._collect(s, where) for s in SPLITS}
        _report_failures(self.failures)
        return splits["train"], splits["test"]

    def _collect(self, split: str, where: Path | str) -> Split:
        arrays, labels = [], []
        for chunk, job in self._jobs[split]:
            images, chunk_labels, failures = _job_result(chunk, job)
            arrays.append(images)
            labels.append(chunk_labels)
            self.failures.extend(failures)
        if sum(len(a) for a in arrays) == 0:
            raise UsageError(f"{where}: no readable {split} images; {ACCEPTED}")
        return Split(torch.from_numpy(np.concatenate(arrays)), torch.from_numpy(np.concatenate(labels)))


def _job_result(chunk: list, job: concurrent.futures.Future | None) -> tuple:
    """A chunk's decoded result: from its worker, else (no job, dead worker) decoded here."""
    if job is not None:
        try:
            return job.result()
        except (concurrent.futures.BrokenExecutor, OSError):
            pass
    return _decode_chunk(chunk)


def _worker_count() -> int:
    """Decode processes: the usable cores, at most ``_MAX_WORKERS``."""
    return worker_count(cap=_MAX_WORKERS)


def _decode_chunk(chunk: list[tuple[str, int, bytes]]) -> tuple[np.ndarray, np.ndarray, list]:
    """Decode ``(name, label, bytes)`` items to a uint8 (k, 3, 32, 32) array, int64 labels and
    ``(name, reason)`` failures.

    Returns numpy arrays so results cross process boundaries as plain pickles.
    """
    images, labels, failures = [], [], []
    with quiet_decoders():  # torchvision 0.29 warns on every decode call: that costs more than the decode
        for name, label, data in chunk:
            try:
                images.append(_to_32x32(decode_rgb(data)))
                labels.append(label)
            except Exception as error:  # any decoder failure means: skip this one image
                failures.append((name, reason(error)))
    stacked = torch.stack(images).numpy() if images else np.empty((0, 3, SIZE, SIZE), np.uint8)
    return stacked, np.array(labels, dtype=np.int64), failures


def _to_32x32(image: torch.Tensor) -> torch.Tensor:
    """Resize an image that is not 32x32 (antialiased bilinear); pass CIFAR images through."""
    if tuple(image.shape[1:]) == (SIZE, SIZE):
        return image
    resized = torch.nn.functional.interpolate(image[None].float(), size=(SIZE, SIZE), mode="bilinear",
                                              antialias=True, align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def _report_failures(failures: list[tuple[str, str]], shown: int = 5) -> None:
    """One stderr line naming the skipped images (the first few) and why."""
    if not failures:
        return
    listed = ", ".join(f"{name} ({reason})" for name, reason in failures[:shown])
    more = f", and {len(failures) - shown} more" if len(failures) > shown else ""
    print(f"skipped {len(failures)} unreadable image(s): {listed}{more}", file=sys.stderr)
