"""CIFAR-10 as uint8 tensors, from any accepted source, decoded once and then cached.

Accepted sources (an explicit ``path`` may name any of them):

* the official ``cifar-10-python.tar.gz`` (pickled batches, read with a restricted unpickler
  that only rebuilds numpy arrays);
* the extracted ``cifar-10-batches-py/`` folder, or a folder containing it;
* an ImageFolder tree ``train/<class>/*`` + ``test/<class>/*``, or a folder holding a single
  such top folder (``cifar10/train/...``);
* an ImageFolder tarball such as ``cifar10-jpeg.tar.gz``, read without extracting it;
* a mirror folder holding one of the above under its usual name (see ``MIRROR_NAMES``);
* a ``.pt`` cache file written by this module.

With ``path=None`` the order is (DESIGN.md, "Data sources and the local mirror"): the cache
``$ALEXNET_DATA`` (default ``~/.cache/alexnet``), the mirror folder ``$ALEXNET_MIRROR``, then a
download of the official archive (md5 check, retries with backoff, progress bar on stderr).

Decoded tensors are written to ``$ALEXNET_DATA/cifar10/<kind>-<hash>.pt``, the hash covering
the source's resolved path, sizes and modification times, so only the first use of a source
pays for decoding. The source found for ``path=None`` is also remembered as ``default.pt``
(a hard link where possible), so later calls skip the mirror look-up altogether.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import io
import os
import pickle
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from alexnet.data.decode import decode_rgb, is_image_name, quiet_decoders, reason
from alexnet.data.pool import make_pool
from alexnet.errors import UsageError

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
# Names looked for in a mirror folder, in this order.
MIRROR_NAMES = (ARCHIVE_NAME, BATCHES_DIR, "cifar10-jpeg.tar.gz", "cifar10")
DEFAULT_CACHE_NAME = "default.pt"

DOWNLOAD_TRIES = 3
DOWNLOAD_TIMEOUT_S = 20.0
DOWNLOAD_BACKOFF_S = 2.0  # doubled after each failed try

CACHE_FORMAT = 1
SIZE = 32

_SPLITS = ("train", "test")
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_CHUNK = 1024  # images per decode task
_MAX_WORKERS = 16  # beyond this, reading the archive is the bottleneck
_ACCEPTED = (
    "expected cifar-10-python.tar.gz, an extracted cifar-10-batches-py/ folder, an ImageFolder "
    "tree train/<class>/ + test/<class>/ or a tarball of one, a folder holding one of these, "
    "or a .pt cache written by alexnet"
)


@dataclass
class Split:
    """One split of the data set: images as uint8 NCHW and labels as int64 class indices."""

    images: torch.Tensor  # uint8, (N, 3, 32, 32), contiguous
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class _Source:
    """A recognised source: ``kind`` is cache, batches-tar, batches-dir, folder-tar or folder-dir."""

    kind: str
    path: Path


# --------------------------------------------------------------------------- public API


def load_cifar10(path: str | None = None, limit: int | None = None, seed: int = 0) -> tuple[Split, Split]:
    """Return ``(train, test)`` CIFAR-10 splits from ``path`` or the default resolution order.

    ``limit=N`` keeps a seeded, class-balanced subset of N examples of each split.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"data limit must be a positive number of examples, got {limit}")
    train, test = _load_full(path)
    if limit is not None:
        train, test = balanced_subset(train, limit, seed), balanced_subset(test, limit, seed)
    return train, test


def balanced_subset(split: Split, n: int, seed: int) -> Split:
    """Return a seeded subset of ``n`` examples with ``n // 10`` per class, the remainder going
    to the first classes (and any class's shortfall to the next ones), in seeded order."""
    if n >= len(split):
        return split
    if n < 0:
        raise UsageError(f"subset size must not be negative, got {n}")
    generator = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(split.labels == c).flatten() for c in range(len(CLASSES))]
    quotas = _class_quotas(n, [len(indices) for indices in by_class])
    picked = [ix[torch.randperm(len(ix), generator=generator)[:q]] for ix, q in zip(by_class, quotas)]
    order = torch.cat(picked)[torch.randperm(n, generator=generator)]
    return Split(split.images[order].contiguous(), split.labels[order].contiguous())


def _class_quotas(n: int, available: list[int]) -> list[int]:
    """Per-class counts summing to ``n``: ``n // k`` each plus one for the first ``n % k``,
    capped by what each class has, with any shortfall taken from later classes in order."""
    k = len(available)
    quotas = [min(n // k + (c < n % k), have) for c, have in enumerate(available)]
    short = n - sum(quotas)
    for c, have in enumerate(available):
        extra = min(short, have - quotas[c])
        quotas[c] += extra
        short -= extra
    return quotas


# --------------------------------------------------------------------------- loading and caching


def _load_full(path: str | None) -> tuple[Split, Split]:
    """Load both full splits: from a cache if one fits the source, else decode and cache."""
    source = _resolve(path)
    if source.kind == "cache":
        splits = _read_cache(source.path)
        if splits is not None:
            return splits
        if path is not None:
            raise UsageError(f"{source.path}: not a readable alexnet CIFAR-10 cache file")
        source.path.unlink(missing_ok=True)  # a broken default cache: resolve afresh
        source = _resolve(None)
    cache_file = _cache_dir() / f"{_cache_key(source)}.pt"
    splits = _read_cache(cache_file) if cache_file.is_file() else None
    if splits is None:
        splits = _decode_source(source, cache_file)
        _write_cache(cache_file, splits, source)
    if path is None:
        _remember_default(cache_file)
    return splits


def cache_root() -> Path:
    """The data cache: ``$ALEXNET_DATA``, default ``~/.cache/alexnet``."""
    return Path(os.environ.get("ALEXNET_DATA") or "~/.cache/alexnet").expanduser()


def _cache_dir() -> Path:
    """The folder holding decoded caches and downloads: ``$ALEXNET_DATA/cifar10``."""
    return cache_root() / "cifar10"


def _cache_key(source: _Source) -> str:
    """A file name stem naming the source's kind and a hash of its path, sizes and mtimes."""
    digest = hashlib.sha1(str(source.path.resolve()).encode())
    for item in _fingerprint_paths(source):
        stat = item.stat()
        digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return f"{source.kind}-{digest.hexdigest()[:12]}"


def _fingerprint_paths(source: _Source) -> list[Path]:
    """The files and folders whose stat identifies a source's content (folder mtimes change
    when files are added, removed or renamed inside them)."""
    if source.kind == "batches-dir":
        return [source.path / name for name in (*_TRAIN_BATCHES, _TEST_BATCH)]
    if source.kind == "folder-dir":
        splits = [source.path / s for s in _SPLITS]
        return [source.path, *splits, *(d for s in splits for d in sorted(s.iterdir()) if d.is_dir())]
    return [source.path]


def _read_cache(path: Path) -> tuple[Split, Split] | None:
    """Load a cache file written by ``_write_cache``; ``None`` (with a note) if it is unusable."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        splits = tuple(Split(blob[f"{s}_images"], blob[f"{s}_labels"]) for s in _SPLITS)
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


def _write_cache(path: Path, splits: tuple[Split, Split], source: _Source) -> None:
    """Write the decoded splits atomically (temp file + rename); warn instead of failing."""
    blob = {"format": CACHE_FORMAT, "source": str(source.path), "kind": source.kind}
    for name, split in zip(_SPLITS, splits):
        blob[f"{name}_images"], blob[f"{name}_labels"] = split.images, split.labels
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            torch.save(blob, out)
        os.replace(tmp, path)
    except OSError as error:
        print(f"could not write the CIFAR-10 cache {path} ({error}); it will be decoded again next time",
              file=sys.stderr)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _remember_default(cache_file: Path) -> None:
    """Make ``default.pt`` name the same cache (hard link, else a copy), atomically."""
    default = cache_file.with_name(DEFAULT_CACHE_NAME)
    if not cache_file.is_file() or (default.exists() and default.samefile(cache_file)):
        return
    tmp = default.with_name(f".{DEFAULT_CACHE_NAME}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(cache_file, tmp)
        except OSError:
            tmp.write_bytes(cache_file.read_bytes())
        os.replace(tmp, default)
    except OSError as error:
        print(f"could not write {default} ({error})", file=sys.stderr)
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- finding the source


def _resolve(path: str | os.PathLike | None) -> _Source:
    """Identify an explicit ``path``, or walk the default order for ``None``."""
    if path is None:
        return _resolve_default()
    given = Path(path).expanduser()
    if not given.exists():
        raise UsageError(f"{given}: no such file or folder; {_ACCEPTED}")
    source = _identify(given)
    if source is None:
        raise UsageError(f"{given}: not a recognised CIFAR-10 layout; {_ACCEPTED}")
    return source


def _resolve_default() -> _Source:
    """Cache, then archive or batches in the cache folder, then mirror, then download."""
    cache = _cache_dir()
    default = cache / DEFAULT_CACHE_NAME
    if default.is_file():
        return _Source("cache", default)
    looked = [f"{cache} (cache)"]
    for folder in (cache, cache.parent):
        found = _first_known(folder, (ARCHIVE_NAME, BATCHES_DIR))
        if found is not None:
            return found
    mirror = os.environ.get("ALEXNET_MIRROR")
    if mirror:
        looked.append(f"{Path(mirror).expanduser()} (ALEXNET_MIRROR)")
        found = _first_known(Path(mirror).expanduser(), MIRROR_NAMES)
        if found is not None:
            return found
    else:
        looked.append("ALEXNET_MIRROR (not set)")
    try:
        return _Source("batches-tar", _download(cache))
    except _DownloadFailed as error:
        raise UsageError(
            f"CIFAR-10 not found: looked in {', '.join(looked)}, and downloading {URL} failed "
            f"({error}); pass --data PATH, set ALEXNET_MIRROR to a folder holding one of "
            f"{', '.join(MIRROR_NAMES)}, or place {ARCHIVE_NAME} into {cache}"
        ) from None


def _first_known(folder: Path, names: tuple[str, ...]) -> _Source | None:
    """The first of ``folder/name`` that exists and is a recognised layout (noting others)."""
    for name in names:
        candidate = folder / name
        if candidate.exists():
            source = _identify(candidate)
            if source is not None:
                return source
            print(f"ignoring {candidate}: not a recognised CIFAR-10 layout", file=sys.stderr)
    return None


def _identify(path: Path) -> _Source | None:
    """Recognise the layout at ``path`` (see the module docstring), or return ``None``."""
    if path.is_file():
        if path.suffix == ".pt":
            return _Source("cache", path)
        kind = _tar_kind(path)
        return _Source(kind, path) if kind else None
    if not path.is_dir():
        return None
    for folder in (path, path / BATCHES_DIR):
        if all((folder / name).is_file() for name in (*_TRAIN_BATCHES, _TEST_BATCH)):
            return _Source("batches-dir", folder)
    root = _imagefolder_root(path)
    if root is not None:
        return _Source("folder-dir", root)
    return _first_known(path, tuple(n for n in MIRROR_NAMES if n != BATCHES_DIR))


def _imagefolder_root(path: Path) -> Path | None:
    """``path`` if it has ``train/`` and ``test/``, or its single visible subfolder if that does."""
    def has_splits(folder: Path) -> bool:
        return all((folder / s).is_dir() for s in _SPLITS)

    if has_splits(path):
        return path
    subfolders = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subfolders) == 1 and has_splits(subfolders[0]):
        return subfolders[0]
    return None


def _tar_kind(path: Path, peek: int = 64) -> str | None:
    """``batches-tar`` or ``folder-tar`` judging by the first members, or ``None``."""
    try:
        with tarfile.open(path, "r:*") as archive:
            for count, member in enumerate(archive):
                parts = _member_parts(member.name)
                if BATCHES_DIR in parts or (parts and parts[-1] in (*_TRAIN_BATCHES, _TEST_BATCH)):
                    return "batches-tar"
                if any(s in parts[:-1] or (member.isdir() and s in parts) for s in _SPLITS):
                    return "folder-tar"
                if count >= peek:
                    break
    except (tarfile.TarError, OSError, EOFError):
        return None
    return None


def _member_parts(name: str) -> tuple[str, ...]:
    """A tar member name split into parts, without ``.`` or empty parts."""
    return tuple(p for p in name.split("/") if p not in ("", "."))


# --------------------------------------------------------------------------- download


class _DownloadFailed(Exception):
    """Every download try failed; the message is the last reason."""


def _download(folder: Path) -> Path:
    """Download the official archive into ``folder`` (retries, progress bar, md5 check)."""
    dest = folder / ARCHIVE_NAME
    part = folder / f"{ARCHIVE_NAME}.{os.getpid()}.part"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the data cache {folder} ({reason(error)}); "
                         "set ALEXNET_DATA to a writable folder") from None
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        try:
            digest = _fetch(URL, part)
            break
        except OSError as error:  # URLError, timeouts and connection resets are all OSError
            part.unlink(missing_ok=True)
            why = reason(getattr(error, "reason", None) or error)
            if attempt == DOWNLOAD_TRIES:
                raise _DownloadFailed(f"{DOWNLOAD_TRIES} tries, last: {why}") from None
            wait = DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1)
            print(f"download of {URL} failed ({why}); retrying in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
    if digest != MD5:
        part.unlink(missing_ok=True)
        raise UsageError(f"downloaded {URL} has md5 {digest}, expected {MD5}; deleted it, try again")
    os.replace(part, dest)
    return dest


def _fetch(url: str, out_path: Path) -> str:
    """Stream ``url`` into ``out_path`` with a progress bar on stderr; return the md5 hex digest."""
    from tqdm import tqdm

    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(out_path, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=ARCHIVE_NAME,
                  file=sys.stderr) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                bar.update(len(chunk))
    return md5.hexdigest()


# --------------------------------------------------------------------------- decoding


def _decode_source(source: _Source, cache_file: Path) -> tuple[Split, Split]:
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
    missing = [n for n in (*_TRAIN_BATCHES, _TEST_BATCH) if n not in blobs]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)}; {_ACCEPTED}")
    parts = [_unpickle_batch(blobs[n], f"{where}:{n}") for n in _TRAIN_BATCHES]
    train = Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    return train, _unpickle_batch(blobs[_TEST_BATCH], f"{where}:{_TEST_BATCH}")


def _decode_batches_tar(path: Path) -> tuple[Split, Split]:
    """Read the six batches straight from the official tarball."""
    wanted = {*_TRAIN_BATCHES, _TEST_BATCH}
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
        blobs = {n: (path / n).read_bytes() for n in (*_TRAIN_BATCHES, _TEST_BATCH)}
    except OSError as error:
        raise UsageError(f"{path}: cannot read the batches ({reason(error)})") from None
    return _splits_from_batches(blobs, path)


def _decode_folder_dir(root: Path) -> tuple[Split, Split]:
    """Decode an ImageFolder tree ``root/{train,test}/<class>/*``."""
    with _Decoder() as decoder:
        for split in _SPLITS:
            folder = root / split
            classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
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
    found: dict[str, set[str]] = {s: set() for s in _SPLITS}
    with _Decoder() as decoder:
        try:
            for split, class_name, name, data in _tar_images(path):
                found[split].add(class_name)
                if class_name in CLASSES:
                    decoder.add(split, name, CLASSES.index(class_name), data)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UsageError(f"{path}: cannot read the archive ({reason(error)})") from None
        for split in _SPLITS:
            _check_classes(sorted(found[split]), f"{path}:{split}/")
        return decoder.finish(path)


def _tar_images(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """Yield ``(split, class folder, member name, bytes)`` for image members of a tarball."""
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            parts = _member_parts(member.name)
            if len(parts) < 3 or parts[-3] not in _SPLITS or not member.isfile():
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
        self._pending: dict[str, list] = {s: [] for s in _SPLITS}
        self._jobs: dict[str, list] = {s: [] for s in _SPLITS}  # (chunk, Future | None)
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
        for split in _SPLITS:
            self._submit(split)
        splits = {s: self._collect(s, where) for s in _SPLITS}
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
            raise UsageError(f"{where}: no readable {split} images; {_ACCEPTED}")
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
    """CPUs this process may use, capped at ``_MAX_WORKERS``."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(count, _MAX_WORKERS))


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
