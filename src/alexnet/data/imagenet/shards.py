"""The prepared image format: 256x256 RGB images in large shard files with a checksummed index.

One split folder (``DIR/train/``, ``DIR/val/``) holds any number of shards, read in sorted
name order; a record's global index is its position in that order. One shard is two files:

* ``shard-NNNNN.bin`` — the records, back to back, nothing in between. A record is one image:
  ``jpeg`` (the default) is a baseline JPEG, 4:2:0 chroma, quality 90 (about 25 KB for an
  ImageNet photo); ``raw`` is the uint8 tensor's bytes in (3, 256, 256) order (196,608 bytes,
  no decoding cost).
* ``shard-NNNNN.idx.npz`` — the index, a numpy ``.npz`` (no pickles) holding ``offsets``
  (int64), ``lengths`` (int64), ``crc32`` (uint32, ``zlib.crc32`` of each record's bytes),
  ``labels`` (int64), ``format`` (the record format as a 0-d string) and ``version``.

``write_shard`` writes the data file and then the index, each to a temporary name first and
moved into place with ``os.replace``, so a shard whose index exists is whole (a reader that
finds an index without its data, or a data file shorter than the index says, reports it).

``ShardReader`` reads records by global index with ``os.pread`` at the indexed offset, verifies
the checksum and decodes them into one batch (``read_many``). File descriptors are opened lazily,
per process (a reader forked into DataLoader workers reopens its files there) and kept in a small
LRU cache, so any number of shards and workers stays under the open-file limit.

JPEG codec: ``simplejpeg`` (libjpeg-turbo; decodes a 256x256 record about 1.2x faster than
``torchvision.io.decode_jpeg`` and 1.5x faster than PIL, and decodes straight into a batch
buffer) where it is installed, else ``torchvision.io``. Both write and read the same standard
JPEG, so shards made with one read with the other. ``read_many`` returns its batch in
channels-last memory (an (N, 3, 256, 256) tensor whose storage is N x 256 x 256 x 3, which is
what a JPEG decoder writes): the values and the shape are those of a contiguous batch; call
``.contiguous()`` where a (N, 3, H, W) storage order matters.
"""

from __future__ import annotations

import collections
import contextlib
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from alexnet.data.decode import quiet_decoders
from alexnet.errors import UsageError
from alexnet.files import atomic_write

try:
    import simplejpeg
except ImportError:  # pragma: no cover - the fallback codec
    simplejpeg = None

FORMATS = ("jpeg", "raw")
SIZE = 256  # stored images are 3 x SIZE x SIZE
RAW_BYTES = 3 * SIZE * SIZE
INDEX_VERSION = 1
DATA_SUFFIX = ".bin"
INDEX_SUFFIX = ".idx.npz"
_OPEN_FILES = 64  # per process and reader


# --------------------------------------------------------------------------- records


def encode(image: torch.Tensor, fmt: str, quality: int = 90) -> bytes:
    """One uint8 (3, 256, 256) image as a record of format ``fmt`` (JPEG ``quality`` 1..100)."""
    _check_format(fmt)
    if image.dtype != torch.uint8 or tuple(image.shape) != (3, SIZE, SIZE):
        raise ValueError(f"expected a uint8 (3, {SIZE}, {SIZE}) image, got {image.dtype} {tuple(image.shape)}")
    if fmt == "raw":
        return image.contiguous().numpy().tobytes()
    if simplejpeg is not None:  # (H, W, 3) order: free for a channels-last image
        pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420")
    from torchvision.io import encode_jpeg

    with quiet_decoders():
        return encode_jpeg(image.contiguous(), quality=quality).numpy().tobytes()


def decode_jpeg_into(record: bytes, out: torch.Tensor) -> torch.Tensor:
    """Decode a 256x256 JPEG record into ``out``, a contiguous uint8 (256, 256, 3) tensor; return ``out``.

    Raises ValueError (or RuntimeError from torchvision) for data that does not decode to
    256x256 RGB, including a damaged record that libjpeg would only warn about.
    """
    if simplejpeg is not None:
        pixels = simplejpeg.decode_jpeg(record, colorspace="RGB", buffer=out.numpy(), strict=True)
        if pixels.shape != (SIZE, SIZE, 3):
            raise ValueError(f"the record decodes to {pixels.shape[1]}x{pixels.shape[0]}, not {SIZE}x{SIZE}")
        return out
    from torchvision.io import ImageReadMode, decode_jpeg

    with quiet_decoders():
        image = decode_jpeg(torch.frombuffer(bytearray(record), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if tuple(image.shape) != (3, SIZE, SIZE):
        raise ValueError(f"the record decodes to {tuple(image.shape)}, not (3, {SIZE}, {SIZE})")
    out.copy_(image.permute(1, 2, 0))
    return out


def decode_on_device(records: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """JPEG records (``ShardReader.read_encoded``) decoded together by ``torchvision.io.decode_jpeg``
    on ``device``: nvJPEG on a GPU, libjpeg-turbo on the CPU (the same code path, as tested here).
    Returns uint8 (N, 3, 256, 256) on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with quiet_decoders():
        images = decode_jpeg(records, mode=ImageReadMode.RGB, device=device)
    return torch.stack(images)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"unknown shard format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- writing


def index_path(data_path: Path) -> Path:
    """The index file belonging to the data file ``data_path`` (``x.bin`` -> ``x.idx.npz``)."""
    data_path = Path(data_path)
    return data_path.with_name(data_path.name.removesuffix(DATA_SUFFIX) + INDEX_SUFFIX)


def write_shard(path: Path, records: Sequence[bytes], labels: Sequence[int], fmt: str) -> None:
    """Write the data file ``path`` (``shard-NNNNN.bin``) and its index, each atomically."""
    _check_format(fmt)
    if len(records) != len(labels):
        raise ValueError(f"{len(records)} records but {len(labels)} labels")
    path = Path(path)
    lengths = np.array([len(r) for r in records], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(records) else lengths
    crcs = np.array([zlib.crc32(r) for r in records], dtype=np.uint32)

    def write_data(out) -> None:
        for record in records:
            out.write(record)

    def write_index(out) -> None:
        np.savez(out, offsets=offsets, lengths=lengths, crc32=crcs,
                 labels=np.asarray(labels, dtype=np.int64), format=np.array(fmt),
                 version=np.array(INDEX_VERSION))

    atomic_write(path, write_data)
    atomic_write(index_path(path), write_index)


def read_index(path: Path) -> dict[str, np.ndarray | str]:
    """The index of the data file ``path`` (or of the index file itself) as a dict of arrays."""
    path = Path(path)
    index_file = path if path.name.endswith(INDEX_SUFFIX) else index_path(path)
    try:
        with np.load(index_file, allow_pickle=False) as blob:
            index = {key: blob[key] for key in ("offsets", "lengths", "crc32", "labels")}
            index["format"] = str(blob["format"])
    except (OSError, KeyError, ValueError) as error:
        raise UsageError(f"{index_file}: not a readable shard index ({error}); "
                         "re-run alexnet prepare to rebuild it") from None
    sizes = {len(v) for k, v in index.items() if k != "format"}
    if len(sizes) != 1 or index["format"] not in FORMATS:
        raise UsageError(f"{index_file}: inconsistent shard index; re-run alexnet prepare to rebuild it")
    return index


# --------------------------------------------------------------------------- reading


class ShardReader:
    """Random access to every record of one split folder, in a fixed global order.

    ``labels`` holds one int64 label per record; ``read_many(indices)`` returns those records as a
    uint8 (N, 3, 256, 256) batch after checking each one's crc32.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index_files = sorted(self.folder.glob(f"shard-*{INDEX_SUFFIX}"))
        if not index_files:
            raise UsageError(f"{self.folder}: no shards (shard-*{INDEX_SUFFIX}) found; "
                             "run alexnet prepare imagenet --src PATH --out DIR first")
        self.shards = [f.with_name(f.name.removesuffix(INDEX_SUFFIX) + DATA_SUFFIX) for f in index_files]
        indexes = [read_index(f) for f in index_files]
        formats = sorted({ix["format"] for ix in indexes})
        if len(formats) != 1:
            raise UsageError(f"{self.folder}: shards mix the formats {', '.join(formats)}; "
                             "re-run alexnet prepare into an empty folder")
        self.format: str = formats[0]
        self._offsets = np.concatenate([ix["offsets"] for ix in indexes])
        self._lengths = np.concatenate([ix["lengths"] for ix in indexes])
        self._crc32 = np.concatenate([ix["crc32"] for ix in indexes])
        counts = [len(ix["labels"]) for ix in indexes]
        self._shard_of = np.repeat(np.arange(len(indexes), dtype=np.int32), counts)
        self._first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.labels = torch.from_numpy(np.concatenate([ix["labels"] for ix in indexes]).astype(np.int64))
        self._ends = [int(ix["offsets"][-1] + ix["lengths"][-1]) if n else 0 for ix, n in zip(indexes, counts)]
        self._files: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read_record(self, i: int) -> bytes:
        """The stored bytes of record ``i``, checksum verified."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} records in {self.folder}")
        i = int(i) % len(self)
        shard = int(self._shard_of[i])
        length, offset = int(self._lengths[i]), int(self._offsets[i])
        data = _pread(self._fd(shard), length, offset)
        if len(data) != length or zlib.crc32(data) != int(self._crc32[i]):
            what = "is cut short" if len(data) != length else "fails its crc32 check"
            raise UsageError(
                f"{self.shards[shard]}: record {i - int(self._first[shard])} (global index {i}) {what}; "
                "the shard is damaged: delete it and re-run alexnet prepare imagenet to rebuild it")
        return data

    def read_encoded(self, indices: Iterable[int]) -> list[torch.Tensor]:
        """The stored bytes of records ``indices`` (checksums verified) as 1-D uint8 tensors, for a
        decoder elsewhere (``decode_on_device``)."""
        return [torch.frombuffer(bytearray(self.read_record(int(i))), dtype=torch.uint8) for i in indices]

    def read_many(self, indices: Iterable[int]) -> torch.Tensor:
        """Records ``indices`` as a uint8 (N, 3, 256, 256) tensor: contiguous for ``raw`` shards,
        channels-last in memory for ``jpeg`` ones (the decoder's own pixel order, no transpose)."""
        indices = [int(i) for i in indices]
        if self.format == "raw":
            out = np.empty((len(indices), 3, SIZE, SIZE), dtype=np.uint8)
            for row, i in enumerate(indices):
                out[row] = self._raw_pixels(self.read_record(i), i)
            return torch.from_numpy(out)
        pixels = torch.empty((len(indices), SIZE, SIZE, 3), dtype=torch.uint8)
        for row, i in enumerate(indices):
            try:
                decode_jpeg_into(self.read_record(i), pixels[row])
            except (RuntimeError, ValueError) as error:  # passes its checksum yet does not decode
                raise UsageError(f"{self._shard_path(i)}: record for global index {i} does not decode ({error}); "
                                 "re-run alexnet prepare imagenet") from None
        return pixels.permute(0, 3, 1, 2)

    def _raw_pixels(self, record: bytes, i: int) -> np.ndarray:
        if len(record) != RAW_BYTES:
            raise UsageError(f"{self._shard_path(i)}: raw record for global index {i} has {len(record)} bytes, "
                             f"not {RAW_BYTES}; re-run alexnet prepare imagenet")
        return np.frombuffer(record, dtype=np.uint8).reshape(3, SIZE, SIZE)

    def _shard_path(self, i: int) -> Path:
        return self.shards[int(self._shard_of[i % len(self)])]

    def _fd(self, shard: int) -> int:
        """An open descriptor for shard ``shard`` in this process (LRU-cached)."""
        if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to share
            self._files = collections.OrderedDict()
            self._pid = os.getpid()
        fd = self._files.get(shard)
        if fd is not None:
            self._files.move_to_end(shard)
            return fd
        path = self.shards[shard]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            size = os.fstat(fd).st_size
        except OSError as error:
            raise UsageError(f"{path}: cannot open the shard ({error.strerror}); "
                             "re-run alexnet prepare imagenet to rebuild it") from None
        if size < self._ends[shard]:
            os.close(fd)
            raise UsageError(f"{path}: shard has {size} bytes, its index expects {self._ends[shard]}; "
                             "re-run alexnet prepare imagenet to rebuild it")
        self._files[shard] = fd
        while len(self._files) > _OPEN_FILES:
            os.close(self._files.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        """Close this process's open shard files."""
        if self._pid == os.getpid():
            for fd in self._files.values():
                os.close(fd)
        self._files = collections.OrderedDict()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = collections.OrderedDict()  # descriptors never travel to other processes
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


def _pread(fd: int, length: int, offset: int) -> bytes:
    """Read ``length`` bytes at ``offset`` without moving a shared file position."""
    if hasattr(os, "pread"):
        parts, done = [], 0
        while done < length:
            chunk = os.pread(fd, length - done, offset + done)
            if not chunk:
                break
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts) if len(parts) != 1 else parts[0]
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - platforms without pread
    return os.read(fd, length)
