"""Writing files so that a reader never sees half of one (the one atomic-write helper), and the cache.

Everything this package writes for later (checkpoints, prepared shards and their indexes, the
CIFAR-10 cache, manifests, statistics) goes through ``atomic_write``: a temporary file beside
the target, flushed to disk, then moved over the target with ``os.replace``. A process killed at
any point leaves either the old file or the new one, plus at most a ``.NAME.PID.tmp`` that the
next run may sweep. ``atomic_link`` makes one file appear under a second name the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def cache_root() -> Path:
    """Where this package caches what it can make again (decoded CIFAR-10, prepared folders, feature
    galleries): ``$ALEXNET_DATA``, default ``~/.cache/alexnet``."""
    root = Path(os.environ.get("ALEXNET_DATA") or "~/.cache/alexnet").expanduser()
    if root.exists() and not root.is_dir():
        from .errors import UsageError

        raise UsageError(f"ALEXNET_DATA={root} is a file, not a folder; set ALEXNET_DATA to a folder for the cache "
                         "(made if missing), or unset it for ~/.cache/alexnet")
    return root


def temp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under first: hidden, per process, beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], fsync: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk (``fsync``), then
    move it into place; on any failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as out:
            write(out)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """``atomic_write`` for writers that take a path (ONNX, TorchScript, safetensors savers): a temporary
    path beside ``path``, with its suffix (savers read it), that becomes ``path`` when the block finishes; a
    failed or interrupted write leaves ``path`` as it was, and an error names ``path``, not the temporary."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.filename == str(tmp):
            err.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_link(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` the same file as ``src`` atomically: a hard link (no second copy on disk), or a
    copy flushed to disk on a file system without hard links."""
    src, dst = Path(src), Path(dst)
    tmp = temp_path(dst)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
