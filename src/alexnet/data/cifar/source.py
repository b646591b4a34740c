"""Where CIFAR-10 comes from: an explicit path, the cache, the local mirror, or a download.

Accepted sources (an explicit ``path`` may name any of them):

* the official ``cifar-10-python.tar.gz`` (pickled batches, read with a restricted unpickler
  that only rebuilds numpy arrays, ``decode.py``);
* the extracted ``cifar-10-batches-py/`` folder, or a folder containing it;
* an ImageFolder tree ``train/<class>/*`` + ``test/<class>/*``, or a folder holding a single
  such top folder (``cifar10/train/...``);
* an ImageFolder tarball such as ``cifar10-jpeg.tar.gz``, read without extracting it;
* a mirror folder holding one of the above under its usual name (see ``MIRROR_NAMES``);
* a ``.pt`` cache file written by ``cifar.py``.

With ``path=None`` the order is (DESIGN.md, "Data sources and the local mirror"): the cache
``$ALEXNET_DATA`` (default ``~/.cache/alexnet``), the mirror folder ``$ALEXNET_MIRROR``, then a
download of the official archive (md5 check, retries with backoff, progress bar on stderr).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from alexnet.data.decode import reason
from alexnet.errors import UsageError
from alexnet.files import cache_root

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
SPLITS = ("train", "test")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
ACCEPTED = (
    "expected cifar-10-python.tar.gz, an extracted cifar-10-batches-py/ folder, an ImageFolder "
    "tree train/<class>/ + test/<class>/ or a tarball of one, a folder holding one of these, "
    "or a .pt cache written by alexnet"
)


@dataclass(frozen=True)
class Source:
    """A recognised source: ``kind`` is cache, batches-tar, batches-dir, folder-tar or folder-dir."""

    kind: str
    path: Path


def cache_dir() -> Path:
    """The folder holding decoded caches and downloads: ``$ALEXNET_DATA/cifar10``."""
    return cache_root() / "cifar10"


def resolve(path: str | os.PathLike | None) -> Source:
    """Identify an explicit ``path``, or walk the default order for ``None``."""
    if path is None:
        return _resolve_default()
    given = Path(path).expanduser()
    if not given.exists():
        raise UsageError(f"{given}: no such file or folder; {ACCEPTED}")
    source = _identify(given)
    if source is None:
        raise UsageError(f"{given}: not a recognised CIFAR-10 layout{_own_photos_hint(given)}; {ACCEPTED}")
    return source


def _own_photos_hint(given: Path) -> str:
    """A folder of one's own photos (train/ and val/) given to the CIFAR-10 recipe: say which recipe reads it."""
    if given.is_dir() and (given / "train").is_dir():
        return (" (it looks like your own photos: train them with --recipe imagenet, or fine-tune with --init CKPT; "
                "a CIFAR-10 ImageFolder has train/ and test/ with its ten classes)")
    return ""


def _resolve_default() -> Source:
    """Cache, then archive or batches in the cache folder, then mirror, then download."""
    cache = cache_dir()
    default = cache / DEFAULT_CACHE_NAME
    if default.is_file():
        return Source("cache", default)
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
        return Source("batches-tar", _download(cache))
    except _DownloadFailed as error:
        raise UsageError(
            f"CIFAR-10 not found: looked in {', '.join(looked)}, and downloading {URL} failed "
            f"({error}); pass --data PATH, set ALEXNET_MIRROR to a folder holding one of "
            f"{', '.join(MIRROR_NAMES)}, or place {ARCHIVE_NAME} into {cache}"
        ) from None


def _first_known(folder: Path, names: tuple[str, ...]) -> Source | None:
    """The first of ``folder/name`` that exists and is a recognised layout (noting others)."""
    for name in names:
        candidate = folder / name
        if candidate.exists():
            source = _identify(candidate)
            if source is not None:
                return source
            print(f"ignoring {candidate}: not a recognised CIFAR-10 layout", file=sys.stderr)
    return None


def _identify(path: Path) -> Source | None:
    """Recognise the layout at ``path`` (see the module docstring), or return ``None``."""
    if path.is_file():
        if path.suffix == ".pt":
            return Source("cache", path)
        kind = _tar_kind(path)
        return Source(kind, path) if kind else None
    if not path.is_dir():
        return None
    for folder in (path, path / BATCHES_DIR):
        if all((folder / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
            return Source("batches-dir", folder)
    root = _imagefolder_root(path)
    if root is not None:
        return Source("folder-dir", root)
    return _first_known(path, tuple(n for n in MIRROR_NAMES if n != BATCHES_DIR))


def _imagefolder_root(path: Path) -> Path | None:
    """``path`` if it has ``train/`` and ``test/``, or its single visible subfolder if that does."""
    def has_splits(folder: Path) -> bool:
        return all((folder / s).is_dir() for s in SPLITS)

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
                parts = member_parts(member.name)
                if BATCHES_DIR in parts or (parts and parts[-1] in (*TRAIN_BATCHES, TEST_BATCH)):
                    return "batches-tar"
                if any(s in parts[:-1] or (member.isdir() and s in parts) for s in SPLITS):
                    return "folder-tar"
                if count >= peek:
                    break
    except (tarfile.TarError, OSError, EOFError):
        return None
    return None


def member_parts(name: str) -> tuple[str, ...]:
    """A tar member name split into parts, without ``.`` or empty parts."""
    return tuple(p for p in name.split("/") if p not in ("", "."))


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
