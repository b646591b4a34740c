"""ILSVRC-2012 (or any ImageFolder tree) -> prepared shards, per-pixel mean image and RGB PCA.

``prepare_imagenet(src, out)`` does the paper's offline step once: every image is decoded,
its shorter side resized to 256 and the centre 256x256 kept, and the result stored in shards
(``alexnet.data.shards``: JPEG quality 90 by default, or ``raw`` uint8). Nothing is fetched
from the internet.

How an image becomes 256x256 (``preprocess``), fastest first:

1. A JPEG is decoded by ``simplejpeg`` (libjpeg-turbo) with DCT-domain scaling: at 1/2, 1/4 or
   1/8 size, the smallest of these whose shorter side is still >= 256 (a 2000x1500 photo decodes
   at 500x375, about 1.7x faster; a typical 500x375 ImageNet photo decodes at full size).
   Only power-of-two scales are used: libjpeg-turbo's 3/4, 5/8 ... scales are slower than a full
   decode. CMYK/YCCK JPEGs, damaged ones and everything else take step 2.
2. Otherwise torchvision's decoder (``ImageReadMode.RGB``), then PIL for what it cannot read.
3. The centre square (side = the shorter side) is resized to 256x256 with antialiased bilinear
   interpolation (``torch.nn.functional.interpolate``, uint8, channels-last). This is the same
   window as "shorter side to 256, then the centre 256x256" to within a pixel, and resizes 25%
   fewer pixels for a 4:3 photo.

Accepted sources: ``src`` is a folder holding (or holding one folder that holds)

* the official files: ``ILSVRC2012_img_train.tar`` (a tar of 1,000 per-class tars
  ``n01440764.tar``), ``ILSVRC2012_img_val.tar`` (flat ``ILSVRC2012_val_00000001.JPEG`` ...)
  and ``ILSVRC2012_devkit_t12.tar.gz`` (the validation labels);
* the same extracted: ``train/<wnid>/*.JPEG`` (or ``train/<wnid>.tar``, the outer tar
  unpacked), ``val/*.JPEG`` flat with the devkit (archive or extracted ``ILSVRC2012_devkit_t12/``)
  in ``src``, or ``val/<wnid>/*.JPEG``;
* any ImageFolder: ``train/<class>/...`` and ``val/<class>/...`` (files found recursively by
  image suffix; class names need not be wnids). The held-out split may also be called
  ``valid/``, ``validation/`` or ``test/`` (the first found in that order); it is stored as ``val``.

An official archive wins over a folder of the same split. Either split may be absent (a note
says so); without ``train`` there are no statistics.

Labels: class ``i`` is the ``i``-th class name in sorted order (torchvision's ImageFolder
order; for ImageNet the standard sorted-wnid order), taken from the train split (else the
devkit's 1,000 leaf synsets, else the val folders). Flat validation images get their label
from the devkit: line ``k`` of ``ILSVRC2012_validation_ground_truth.txt`` is the
ILSVRC2012_ID of ``ILSVRC2012_val_<k>``, mapped to a wnid through ``meta.mat``'s ``synsets``
(those IDs are *not* in wnid order). Validation images of a class that train lacks are skipped
and reported.

Image handling: CMYK, grayscale, palette and RGBA images become RGB (torchvision's decoder with
``ImageReadMode.RGB``, PIL's ``convert("RGB")`` for what it cannot read, 16-bit PNGs scaled to
8 bits); the format is sniffed from the bytes, so a PNG named ``.JPEG`` is fine. **EXIF
orientation is not applied**: images keep their stored pixel order, as in ImageNet's official
pipeline and torchvision's default. Truncated, corrupt, empty and non-image files are skipped
and listed, with the reason, in ``report.json``; one bad file never stops the run.

Output (``DIR`` = ``out``)::

    DIR/classes.tsv                  index, wnid, name (devkit words, else the packaged
                                     ILSVRC-2012 names, else the folder name)
    DIR/stats.safetensors            mean_image (3,256,256), rgb_mean (3), eigval (3, ascending),
                                     eigvec (3,3, columns), covariance (3,3): float32 on the
                                     0..255 scale over the stored training images; image_count,
                                     pixel_count: int64
    DIR/report.json                  skipped files {split, source, reason}, counts, warnings
    DIR/prepared.json                format, counts, source; written last: present = complete
    DIR/<split>/manifest.tsv         index, source, label, wnid of every stored image, in the
                                     ShardReader's global order (source: path relative to src,
                                     or archive.tar/inner.tar/member)
    DIR/<split>/shard-NNNNN.bin      records   } see alexnet.data.shards
    DIR/<split>/shard-NNNNN.idx.npz  index     }
    DIR/<split>/shard-NNNNN.done.json   the shard's work key, sources, labels, skipped files
    DIR/train/shard-NNNNN.stats.npz     the shard's exact int64 sums for the statistics

Work and resume: each shard is one independent unit of work (one per-class train tar, else
``shard_size`` consecutive images of the sorted list), built in a process pool and written
atomically (temporary file + ``os.replace``), ``done.json`` last. A re-run skips every shard
whose ``done.json`` carries the same key (a hash of the shard's sources, labels, format and
quality) and whose data matches its index, then merges: statistics are sums of exact integer
partial sums, so the result is identical however the work was split or resumed.

Statistics are computed from each 256x256 uint8 image as prepared, before it is encoded: the
mean image and RGB covariance of the training images themselves. For ``raw`` shards that is
exactly what readers see; for ``jpeg`` shards readers see the image plus quality-90 coding
noise (mean within about 0.1 of a level per pixel, which averages out over many images).
Computing them before encoding saves decoding every record again (a quarter of the time per
image). Files edited in
place keep their name and are not detected; prepare into a fresh folder after such changes.
Two runs must not share one ``out`` at the same time.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.resources
import io
import json
import os
import re
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alexnet.data import shards
from alexnet.data.decode import (BadImage, decode_rgb, is_image_name, quiet_decoders,
                                 reason as _reason)
from alexnet.data.pool import make_pool
from alexnet.errors import UsageError

try:
    import simplejpeg
except ImportError:  # pragma: no cover - torchvision decodes everything then
    simplejpeg = None

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
META_MAT = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
OFFICIAL_COUNTS = {"train": 1_281_167, "val": 50_000}
SPLITS = ("train", "val")
VAL_FOLDERS = ("val", "valid", "validation", "test")  # the held-out split's folder, first found wins
SIZE = shards.SIZE
SHARD_IMAGES = 1000  # images per shard where the source has no natural unit (folders, val tar)
PREPARED_VERSION = 2  # 2: centre square resized (was: resize, then crop); stats before encoding
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.", re.IGNORECASE)
_SHARD_FILE = re.compile(r"shard-\d+(\.bin|\.idx\.npz|\.done\.json|\.stats\.npz)")
_ACCEPTED = (
    f"expected a folder holding {TRAIN_TAR} and/or {VAL_TAR} (+ {DEVKIT_TAR}), or train/<class>/ "
    f"and/or val/<class>/ folders (val/ may be flat with the devkit beside it)"
)


# --------------------------------------------------------------------------- public API


def prepare_imagenet(src: Path, out: Path, workers: int | None = None, fmt: str = "jpeg",
                     quality: int = 90, progress: bool = True, shard_size: int = SHARD_IMAGES) -> dict:
    """Prepare ``src`` into ``out`` (see the module docstring); return a summary dict with
    ``out``, ``format``, ``quality``, ``counts`` and ``skipped`` per split, ``seconds``,
    ``images_per_s``, ``shards_built``, ``shards_reused`` and ``warnings``."""
    start = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out).expanduser()
    workers = _check_options(workers, fmt, quality, shard_size)
    plan = _make_plan(src, shard_size)
    if out.resolve() == plan.root.resolve():
        raise UsageError(f"{out}: the output folder is the source folder; pass another --out DIR")
    _prepare_out(out, plan)
    units = [unit for split in SPLITS for unit in plan.units.get(split, [])]
    keys = {(u.split, u.number): u.key(fmt, quality) for u in units}
    todo = [u for u in units if not _is_complete(out / u.split, u, keys[u.split, u.number])]
    if progress:
        found = ", ".join(f"{s} from {plan.described[s]} ({len(plan.units[s])} shards)" for s in plan.units)
        reused = f"; {len(units) - len(todo)} shards already done" if len(todo) < len(units) else ""
        print(f"preparing {found} into {out} with {min(workers, max(len(todo), 1))} workers{reused}",
              file=sys.stderr)
    failures = _build_units(todo, out, keys, fmt, quality, workers, progress, len(units))
    if failures:
        first_unit, reason = failures[0]
        raise UsageError(
            f"{len(failures)} of {len(todo)} shards failed (first: {first_unit.split}/{first_unit.name}: "
            f"{reason}); finished shards are kept: re-run the same command to resume")
    summary = _finish(out, plan, fmt, quality, src)
    summary.update(seconds=round(time.perf_counter() - start, 3), shards_built=len(todo),
                   shards_reused=len(units) - len(todo))
    built = sum(summary["counts"].values())
    summary["images_per_s"] = round(built / summary["seconds"], 1) if summary["seconds"] > 0 else None
    if progress:
        counts = ", ".join(f"{n:,} {s}" for s, n in summary["counts"].items())
        skipped = sum(summary["skipped"].values())
        print(f"prepared {counts} images into {out} in {summary['seconds']:.1f} s"
              + (f"; skipped {skipped} bad files (listed in {out / 'report.json'})" if skipped else ""),
              file=sys.stderr)
    return summary


def preprocess(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 (3, 256, 256): RGB, shorter side 256, centre crop.

    Raises ``BadImage`` with a short reason for empty, truncated, corrupt and non-image data.
    """
    return _preprocess(data).contiguous()


def _preprocess(data: bytes) -> torch.Tensor:
    """``preprocess`` without the final copy: the result may be channels-last in memory."""
    pixels = _decode_jpeg_scaled(data)
    image = torch.from_numpy(pixels).permute(2, 0, 1) if pixels is not None else decode_rgb(data)
    return resize_center_crop(image)


def _decode_jpeg_scaled(data: bytes) -> np.ndarray | None:
    """A JPEG as uint8 (H, W, 3) RGB, DCT-scaled by 1/2, 1/4 or 1/8 where the shorter side stays
    >= 256; ``None`` where simplejpeg is missing or cannot decode it exactly (CMYK, damaged data,
    not a JPEG): the general decoder then decides, and gives the reason for a bad file."""
    if simplejpeg is None or not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("Gray", "YCbCr", "RGB"):
            return None
        factor = 1
        while factor < 8 and min(height, width) // (2 * factor) >= SIZE:
            factor *= 2
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // factor),
                                      min_width=-(-width // factor), strict=True)
    except ValueError:
        return None


def resize_center_crop(image: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """The centre square of a uint8 (3, H, W) image resized to ``size`` x ``size`` (antialiased
    bilinear): shorter side to ``size``, then the centre crop, to within a pixel.

    The result is channels-last in memory (its ``permute(1, 2, 0)`` is a contiguous (H, W, 3)
    array, what JPEG encoders take); torch's uint8 antialiased resize is fastest that way too.
    """
    from torch.nn import functional as F

    height, width = image.shape[1:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    pixels = image[:, top:top + side, left:left + side].permute(1, 2, 0).contiguous()  # no copy if already so
    square = pixels[None].permute(0, 3, 1, 2)  # (1, 3, side, side), channels-last
    if side == size:
        return square[0]
    return F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


@dataclass(frozen=True)
class Devkit:
    """What prepare needs from ILSVRC2012_devkit_t12: leaf wnids, their words, val labels."""

    words: dict[str, str]  # leaf wnid -> words ("tench, Tinca tinca")
    val_wnids: tuple[str, ...]  # wnid of ILSVRC2012_val_<k> at position k - 1
    where: str


def read_devkit(path: Path) -> Devkit:
    """Read ``meta.mat`` and the validation ground truth from the devkit archive or folder."""
    import scipy.io

    path = Path(path)
    try:
        meta, truth = _devkit_files(path)
        synsets = np.atleast_1d(scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"])
        ids = [int(i) for i in synsets["ILSVRC2012_ID"]]
        wnids = [str(w) for w in synsets["WNID"]]
        words = [str(w) for w in synsets["words"]]
        children = [int(c) for c in synsets["num_children"]]
        truth_ids = [int(line) for line in truth.split()]
    except (OSError, KeyError, ValueError, TypeError, tarfile.TarError, NotImplementedError) as error:
        raise UsageError(f"{path}: not a readable ILSVRC-2012 devkit ({_reason(error)}); expected "
                         f"{DEVKIT_DIR}/{META_MAT} and {DEVKIT_DIR}/{GROUND_TRUTH}") from None
    leaves = {i: (w, t) for i, w, t, c in zip(ids, wnids, words, children) if c == 0}
    unknown = sorted(set(truth_ids) - set(leaves))
    if unknown:
        raise UsageError(f"{path}: the validation ground truth uses ILSVRC2012_IDs {unknown[:5]} that "
                         "meta.mat does not list as leaf synsets; the devkit is damaged or not ILSVRC-2012")
    return Devkit(words={w: t for w, t in leaves.values()},
                  val_wnids=tuple(leaves[i][0] for i in truth_ids), where=str(path))


def imagenet_classes() -> dict[str, str]:
    """The 1,000 ILSVRC-2012 classes, wnid -> short name, in the standard (sorted wnid) order."""
    text = importlib.resources.files("alexnet.data").joinpath("imagenet_classes.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return {wnid: name for _, wnid, name in rows}


# --------------------------------------------------------------------------- decoding details


# --------------------------------------------------------------------------- finding the source


@dataclass(frozen=True)
class _Unit:
    """One shard's worth of work.

    ``kind`` says what ``items`` are: ``files``: (path relative to ``root``, label); ``members``:
    (member name, label, offset, size) in the tar ``root``, sources prefixed with ``prefix``;
    ``tar``: one (display name, label, offset, size) per-class tar stored at ``offset`` in ``root``.
    """

    split: str
    number: int
    kind: str
    root: str
    prefix: str
    items: tuple

    @property
    def name(self) -> str:
        return f"shard-{self.number:05d}"

    def key(self, fmt: str, quality: int) -> str:
        """A hash of what this shard holds and how: equal keys mean an equal shard."""
        text = json.dumps([PREPARED_VERSION, SIZE, fmt, quality if fmt == "jpeg" else None, self.kind,
                           self.prefix, self.items], ensure_ascii=True)
        return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class _Plan:
    root: Path
    classes: list[str]
    names: dict[str, str]
    units: dict[str, list[_Unit]] = field(default_factory=dict)
    skipped: dict[str, list[dict]] = field(default_factory=dict)  # known before decoding
    official: dict[str, bool] = field(default_factory=dict)
    described: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _check_options(workers: int | None, fmt: str, quality: int, shard_size: int) -> int:
    """Validate the options; return the worker count."""
    if fmt not in shards.FORMATS:
        raise UsageError(f"unknown format {fmt!r}; expected one of {', '.join(shards.FORMATS)}")
    if not 1 <= quality <= 100:
        raise UsageError(f"JPEG quality must be 1..100, got {quality}")
    if shard_size < 1:
        raise UsageError(f"shard size must be a positive number of images, got {shard_size}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    return workers


def _make_plan(src: Path, shard_size: int) -> _Plan:
    """Find the layout under ``src``, list every image with its label, cut it into units."""
    root = _find_root(src)
    train_kind, train_path = _train_source(root)
    val_kind, val_path = _val_source(root)
    devkit_path = _find_devkit(root)
    if val_kind in ("tar", "flat") and devkit_path is None:
        raise UsageError(f"{val_path}: flat validation images need the labels in {DEVKIT_TAR} (or an "
                         f"extracted {DEVKIT_DIR}/) beside them in {root}, and none is there; add it or "
                         "use val/<class>/ folders")
    devkit = read_devkit(devkit_path) if devkit_path is not None else None
    train = _train_units(train_kind, train_path, root, shard_size) if train_kind else None
    if train is not None:
        classes = train[0]
    elif devkit is not None:
        classes = sorted(devkit.words)
    else:
        classes = _class_folders(val_path)
    known = imagenet_classes()
    names = {c: (devkit.words.get(c) if devkit else None) or known.get(c) or c for c in classes}
    plan = _Plan(root, classes, names)
    all_known = len(classes) == len(known) and set(classes) == set(known)
    if train is not None:
        plan.units["train"] = train[1]
        listed = {label for unit in train[1] if unit.kind == "files" for _, label in unit.items}
        empty = [c for label, c in enumerate(classes) if label not in listed] if train_kind == "folder" else []
        if empty and train[1] and train[1][0].kind == "files":
            plan.warnings.append(f"{len(empty)} train class folder(s) hold no images: {', '.join(empty[:5])}")
        plan.skipped["train"] = []
        plan.official["train"] = train_kind == "tar" or all_known
        plan.described["train"] = _display(train_path, root)
    else:
        plan.warnings.append(f"no train split in {root}: no statistics (stats.safetensors) are written")
    if val_kind:
        plan.units["val"], plan.skipped["val"] = _val_units(val_kind, val_path, root, devkit, classes, shard_size)
        plan.official["val"] = val_kind == "tar" or all_known
        plan.described["val"] = _display(val_path, root)
    else:
        plan.warnings.append(f"no val split in {root}")
    for line in plan.warnings:
        print(f"note: {line}", file=sys.stderr)
    return plan


def _find_root(src: Path) -> Path:
    """``src``, or its single visible subfolder, whichever holds a recognised layout."""
    if not src.exists():
        raise UsageError(f"{src}: no such folder; {_ACCEPTED}")
    if not src.is_dir():
        raise UsageError(f"{src}: is a file, pass the folder that holds it; {_ACCEPTED}")
    if _has_layout(src):
        return src
    visible = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    subfolders = [p for p in visible if p.is_dir()]
    if len(subfolders) == 1 and _has_layout(subfolders[0]):
        return subfolders[0]
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in visible[:10]) or "nothing"
    more = f" ... ({len(visible)} entries)" if len(visible) > 10 else ""
    raise UsageError(f"{src}: no ImageNet layout found (it holds {shown}{more}); {_ACCEPTED}")


def _has_layout(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (TRAIN_TAR, VAL_TAR)) or any(
        (folder / name).is_dir() for name in ("train", *VAL_FOLDERS))


def _train_source(root: Path) -> tuple[str | None, Path | None]:
    """(``tar``, the official archive) or (``folder``, train/) or (None, None)."""
    if (root / TRAIN_TAR).is_file():
        _note_also(root / "train", root / TRAIN_TAR)
        return "tar", root / TRAIN_TAR
    if (root / "train").is_dir():
        return "folder", root / "train"
    return None, None


def _val_source(root: Path) -> tuple[str | None, Path | None]:
    """(``tar`` | ``folder`` | ``flat``, path) for the validation images, or (None, None)."""
    if (root / VAL_TAR).is_file():
        _note_also(root / "val", root / VAL_TAR)
        return "tar", root / VAL_TAR
    folder = next((root / name for name in VAL_FOLDERS if (root / name).is_dir()), None)
    if folder is None:
        return None, None
    others = [name for name in VAL_FOLDERS if (root / name).is_dir() and root / name != folder]
    if others:
        print(f"note: using {folder.name}/ as the validation split; ignoring {', '.join(others)}/", file=sys.stderr)
    if _class_folders(folder):
        return "folder", folder
    if any(is_image_name(p.name) and p.is_file() for p in folder.iterdir()):
        return "flat", folder
    raise UsageError(f"{folder}: neither class folders (val/<class>/) nor image files; {_ACCEPTED}")


def _note_also(folder: Path, archive: Path) -> None:
    if folder.is_dir():
        print(f"note: using {archive.name}; ignoring {folder}", file=sys.stderr)


def _find_devkit(root: Path) -> Path | None:
    for candidate in (root / DEVKIT_TAR, root / DEVKIT_DIR):
        if candidate.exists():
            return candidate
    return None


def _devkit_files(path: Path) -> tuple[bytes, str]:
    """The bytes of meta.mat and the text of the ground truth, from the folder or archive."""
    if path.is_dir():
        return (path / META_MAT).read_bytes(), (path / GROUND_TRUTH).read_text()
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            for wanted in (META_MAT, GROUND_TRUTH):
                if member.isfile() and (member.name == wanted or member.name.endswith("/" + wanted)):
                    found[wanted] = archive.extractfile(member).read()
    missing = [name for name in (META_MAT, GROUND_TRUTH) if name not in found]
    if missing:
        raise KeyError(f"no {' or '.join(missing)} inside")
    return found[META_MAT], found[GROUND_TRUTH].decode()


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _display(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) + ("/" if path.is_dir() else "")


def _list_files(folder: Path, root: Path) -> list[str]:
    """Image files under ``folder`` (recursively, following links), relative to ``root``, sorted."""
    found = []
    for where, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(where).relative_to(root)
        found.extend(str(base / name) for name in files if is_image_name(name))
    return sorted(found)


def _tar_members(path: Path) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of the regular files in the uncompressed tar ``path``."""
    try:
        with tarfile.open(path, "r:") as archive:
            return [(m.name, m.offset_data, m.size) for m in archive if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UsageError(f"{path}: not a readable uncompressed tar archive ({_reason(error)})") from None


def _train_units(kind: str, path: Path, root: Path, shard_size: int) -> tuple[list[str], list[_Unit]]:
    """(sorted class names, units): one unit per class tar, else ``shard_size`` files per unit."""
    if kind == "tar":
        tars = [(Path(n).name.removesuffix(".tar"), f"{TRAIN_TAR}/{n}", str(path), off, size)
                for n, off, size in _tar_members(path) if n.endswith(".tar")]
        if not tars:
            raise UsageError(f"{path}: holds no per-class tars (n01440764.tar ...); is it {TRAIN_TAR}?")
    elif classes := _class_folders(path):
        items = [(rel, label) for label, c in enumerate(classes) for rel in _list_files(path / c, root)]
        return classes, _chunk("train", "files", str(root), "", items, shard_size)
    else:
        tars = [(p.stem, str(p.relative_to(root)), str(p), 0, p.stat().st_size) for p in path.iterdir()
                if p.is_file() and p.suffix == ".tar" and not p.name.startswith(".")]
        if not tars:
            raise UsageError(f"{path}: neither class folders (train/<class>/) nor per-class tars "
                             f"(train/<wnid>.tar); {_ACCEPTED}")
    tars.sort()
    units = [_Unit("train", label, "tar", archive, "", ((display, label, offset, size),))
             for label, (_, display, archive, offset, size) in enumerate(tars)]
    return [c for c, *_ in tars], units


def _chunk(split: str, kind: str, where: str, prefix: str, items: list, shard_size: int) -> list[_Unit]:
    return [_Unit(split, number, kind, where, prefix, tuple(items[start:start + shard_size]))
            for number, start in enumerate(range(0, len(items), shard_size))]


def _val_units(kind: str, path: Path, root: Path, devkit: Devkit | None, classes: list[str],
               shard_size: int) -> tuple[list[_Unit], list[dict]]:
    """Units and the images skipped up front (no label, or a class train lacks)."""
    index = {c: i for i, c in enumerate(classes)}
    items, skipped = [], []

    def label_of(source: str, wnid: str | None, why: str) -> int | None:
        if wnid is None:
            skipped.append({"split": "val", "source": source, "reason": why})
            return None
        if wnid not in index:
            skipped.append({"split": "val", "source": source, "reason": f"class {wnid} is not among the "
                            f"{len(classes)} train classes"})
            return None
        return index[wnid]

    if kind == "folder":
        for wnid in _class_folders(path):
            for rel in _list_files(path / wnid, root):
                label = label_of(rel, wnid, "")
                if label is not None:
                    items.append((rel, label))
        return _chunk("val", "files", str(root), "", items, shard_size), skipped
    if kind == "flat":
        names = [(rel, Path(rel).name) for rel in _list_files(path, root) if Path(rel).parent == path.relative_to(root)]
    else:
        names = sorted((name, off, size) for name, off, size in _tar_members(path) if is_image_name(Path(name).name))
    for entry in names:
        name = entry[0]
        wnid, why = _val_wnid(Path(name).name, devkit)
        label = label_of(name if kind == "flat" else f"{VAL_TAR}/{name}", wnid, why)
        if label is not None:
            items.append((name, label) if kind == "flat" else (name, label, entry[1], entry[2]))
    if kind == "flat":
        return _chunk("val", "files", str(root), "", items, shard_size), skipped
    return _chunk("val", "members", str(path), VAL_TAR, items, shard_size), skipped


def _val_wnid(name: str, devkit: Devkit) -> tuple[str | None, str]:
    """The wnid of a flat validation image from its number, or (None, why not)."""
    match = _VAL_NAME.match(name)
    if match is None:
        return None, "no ground-truth label: the name is not ILSVRC2012_val_<number>.<ext>"
    number = int(match.group(1))
    if not 1 <= number <= len(devkit.val_wnids):
        return None, f"no ground-truth label: the devkit labels images 1..{len(devkit.val_wnids)}"
    return devkit.val_wnids[number - 1], ""


# --------------------------------------------------------------------------- building shards


def _prepare_out(out: Path, plan: _Plan) -> None:
    """Create the output folders; drop the completion marker, temp files and stale splits."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "prepared.json").unlink(missing_ok=True)
        for split in SPLITS:
            folder = out / split
            if split in plan.units:
                folder.mkdir(exist_ok=True)
                for tmp in folder.glob(".shard-*.tmp"):
                    tmp.unlink(missing_ok=True)
            elif folder.is_dir():
                _remove_shards(folder, keep=0)
                (folder / "manifest.tsv").unlink(missing_ok=True)
    except OSError as error:
        raise UsageError(f"{out}: cannot write the output folder ({error.strerror or error})") from None


def _remove_shards(folder: Path, keep: int) -> None:
    """Delete shard files numbered ``keep`` and above (left by a larger earlier run)."""
    for path in folder.iterdir():
        if _SHARD_FILE.fullmatch(path.name) and int(path.name[6:].split(".")[0]) >= keep:
            path.unlink(missing_ok=True)


def _is_complete(folder: Path, unit: _Unit, key: str) -> bool:
    """True if ``unit``'s shard exists with this key and its data matches its index."""
    try:
        done = json.loads((folder / f"{unit.name}.done.json").read_text())
        if done.get("key") != key:
            return False
        data = folder / f"{unit.name}{shards.DATA_SUFFIX}"
        index = shards.read_index(data)
        if len(index["labels"]) != done["records"]:
            return False
        end = int(index["offsets"][-1] + index["lengths"][-1]) if done["records"] else 0
        return data.stat().st_size == end and (unit.split != "train" or (folder / f"{unit.name}.stats.npz").is_file())
    except (OSError, ValueError, KeyError, UsageError):
        return False


def _build_units(todo: list[_Unit], out: Path, keys: dict, fmt: str, quality: int, workers: int,
                 progress: bool, total: int) -> list[tuple[_Unit, str]]:
    """Build ``todo`` (in a process pool if more than one worker); return the failures."""
    from tqdm import tqdm

    failures: list[tuple[_Unit, str]] = []
    if not todo:
        return failures
    jobs = [(u, str(out / u.split), fmt, quality, keys[u.split, u.number]) for u in todo]
    pool = make_pool(min(workers, len(todo))) if workers > 1 and len(todo) > 1 else None
    start, images = time.perf_counter(), 0
    bar = tqdm(total=total, initial=total - len(todo), unit="shard", desc="prepare", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        if pool is None:
            outcomes = ((job[0], _try(_build_unit, *job)) for job in jobs)
        else:
            futures = {pool.submit(_build_unit, *job): job[0] for job in jobs}
            outcomes = ((futures[f], _future_outcome(f)) for f in concurrent.futures.as_completed(futures))
        for unit, (result, error) in outcomes:
            if error is not None:
                failures.append((unit, error))
            else:
                images += result["records"]
            bar.update(1)
            bar.set_postfix_str(f"{images / max(time.perf_counter() - start, 1e-9):.0f} img/s", refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _try(function, *args) -> tuple[dict | None, str | None]:
    try:
        return function(*args), None
    except Exception as error:  # one failed unit must not stop the others
        return None, f"{type(error).__name__}: {_reason(error)}"


def _future_outcome(future: concurrent.futures.Future) -> tuple[dict | None, str | None]:
    try:
        return future.result(), None
    except Exception as error:  # a worker died (BrokenProcessPool) or the unit raised
        return None, f"{type(error).__name__}: {_reason(error)}"


def _build_unit(unit: _Unit, folder: str, fmt: str, quality: int, key: str) -> dict:
    """Decode, preprocess and store one unit's images as one shard (+ stats sums, done.json)."""
    folder = Path(folder)
    done_path = folder / f"{unit.name}.done.json"
    done_path.unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    kept: list[tuple[str, int, bytes]] = []
    skipped: list[dict] = []
    sums = _Sums() if unit.split == "train" else None
    with quiet_decoders():
        for source, label, data in _unit_images(unit):
            try:
                if isinstance(data, BadImage):
                    raise data
                image = _preprocess(data)
                record = shards.encode(image, fmt, quality)
                if sums is not None:  # statistics of the prepared image, before encoding
                    sums.add(image)
            except Exception as error:  # any failure means: skip this one file
                reason = str(error) if isinstance(error, BadImage) else f"unreadable ({_reason(error)})"
                skipped.append({"split": unit.split, "source": source, "reason": reason})
                continue
            kept.append((source, label, record))
    if unit.kind == "tar":  # tar order is arbitrary; folders are listed sorted
        kept.sort(key=lambda entry: entry[0])
    data_path = folder / f"{unit.name}{shards.DATA_SUFFIX}"
    shards.write_shard(data_path, [r for _, _, r in kept], [label for _, label, _ in kept], fmt)
    if sums is not None:
        sums.save(folder / f"{unit.name}.stats.npz")
    done = {"key": key, "records": len(kept), "sources": [s for s, _, _ in kept],
            "labels": [label for _, label, _ in kept], "skipped": skipped}
    shards.atomic_write(done_path, lambda f: f.write(json.dumps(done).encode()))
    return {"records": len(kept), "skipped": len(skipped)}


def _unit_images(unit: _Unit) -> Iterator[tuple[str, int, bytes | BadImage]]:
    """(source, label, bytes or the reason it could not be read) for every image of a unit."""
    if unit.kind == "files":
        for rel, label in unit.items:
            try:
                yield rel, label, (Path(unit.root) / rel).read_bytes()
            except OSError as error:
                yield rel, label, BadImage(f"unreadable file ({error.strerror or error})")
        return
    with open(unit.root, "rb") as archive:
        if unit.kind == "members":
            for name, label, offset, size in unit.items:
                data = os.pread(archive.fileno(), size, offset)
                yield f"{unit.prefix}/{name}", label, data if len(data) == size else BadImage("archive cut short")
            return
        (display, label, offset, size), = unit.items
        yield from _inner_tar_images(archive, display, label, offset, size)


def _inner_tar_images(archive, display: str, label: int, offset: int, size: int) -> Iterator:
    """The image members of the per-class tar stored at ``offset`` in ``archive``."""
    window = io.BufferedReader(_Window(archive.fileno(), offset, size), 1 << 20)
    try:
        with tarfile.open(fileobj=window, mode="r:") as inner:
            for member in inner:
                if member.isfile() and is_image_name(Path(member.name).name):
                    yield f"{display}/{member.name}", label, inner.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        yield display, label, BadImage(f"damaged class archive, the rest of it is missing ({_reason(error)})")


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes at ``start`` of an open file (a tar inside a tar)."""

    def __init__(self, fd: int, start: int, size: int):
        super().__init__()
        self._fd, self._start, self._size, self._pos = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self._size - self._pos)
        if wanted <= 0:
            return 0
        data = os.pread(self._fd, wanted, self._start + self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


_FLOAT_IMAGES = 65_000  # 65,000 * 255 < 2**24: a float32 sum of this many images is exact


class _Sums:
    """Exact integer sums over stored training images: per-pixel sum and RGB outer products.

    Sums are taken in float32 where that is exact (and several times faster than int64): the
    per-pixel sum of at most ``_FLOAT_IMAGES`` images stays below 2**24 (then it is moved into
    the int64 total), and one image row's 256 products of two 0..255 values sum to at most
    256 * 255**2 < 2**24, so every partial sum is an integer that float32 holds exactly.
    """

    def __init__(self) -> None:
        self.total = torch.zeros((3, SIZE, SIZE), dtype=torch.int64)
        self.recent = torch.zeros((3, SIZE, SIZE), dtype=torch.float32)  # the last < _FLOAT_IMAGES images
        self.outer = torch.zeros((3, 3), dtype=torch.int64)
        self.images = 0
        self._pixels = torch.empty((3, SIZE, SIZE), dtype=torch.float32)

    def add(self, image: torch.Tensor) -> None:
        """Add one uint8 (3, 256, 256) image (any memory layout)."""
        pixels = self._pixels.copy_(image)  # float32 (channel, row, column), one pass
        self.recent += pixels
        rows = pixels.transpose(0, 1)  # (row, channel, column)
        self.outer += torch.bmm(rows, rows.transpose(1, 2)).sum(0, dtype=torch.float64).to(torch.int64)
        self.images += 1
        if self.images % _FLOAT_IMAGES == 0:
            self._fold()

    def _fold(self) -> None:
        self.total += self.recent.to(torch.int64)
        self.recent.zero_()

    @property
    def image(self) -> torch.Tensor:
        """The per-pixel sum as int64 (3, 256, 256)."""
        self._fold()
        return self.total

    def save(self, path: Path) -> None:
        shards.atomic_write(path, lambda f: np.savez(f, images=np.array(self.images), image=self.image.numpy(),
                                                     outer=self.outer.numpy()))


# --------------------------------------------------------------------------- merging


def _finish(out: Path, plan: _Plan, fmt: str, quality: int, src: Path) -> dict:
    """Manifests, statistics, classes, report and the completion marker from finished shards."""
    counts, skipped_counts, skipped, warnings_ = {}, {}, [], list(plan.warnings)
    for split, units in plan.units.items():
        folder = out / split
        rows, split_skipped = [], list(plan.skipped[split])
        for unit in units:
            done = json.loads((folder / f"{unit.name}.done.json").read_text())
            rows.extend(zip(done["sources"], done["labels"]))
            split_skipped.extend(done["skipped"])
        _write_lines(folder / "manifest.tsv", ["index\tsource\tlabel\twnid"] + [
            f"{i}\t{_tsv(source)}\t{label}\t{_tsv(plan.classes[label])}" for i, (source, label) in enumerate(rows)])
        _remove_shards(folder, keep=len(units))
        counts[split], skipped_counts[split] = len(rows), len(split_skipped)
        skipped.extend(split_skipped)
        expected = OFFICIAL_COUNTS[split]
        if plan.official[split] and len(rows) != expected:
            line = (f"{split}: {len(rows):,} images prepared ({len(split_skipped)} skipped), but the official "
                    f"ILSVRC-2012 {split} set has {expected:,}; check that the source is complete")
            warnings_.append(line)
            print(f"warning: {line}", file=sys.stderr)
    if "train" in plan.units:
        stats = _merge_stats(out / "train", plan.units["train"])
        if stats is not None:
            from safetensors.torch import save_file

            save_file(stats, str(out / "stats.safetensors"), metadata={
                "scale": "0..255", "covariance": "population covariance of all training pixels (RGB)",
                "eigvec": "columns are eigenvectors; eigval ascending (numpy.linalg.eigh)"})
    _write_lines(out / "classes.tsv", ["index\twnid\tname"] + [
        f"{i}\t{_tsv(c)}\t{_tsv(plan.names[c])}" for i, c in enumerate(plan.classes)])
    report = {"skipped": skipped,
              "counts": {s: {"images": counts[s], "skipped": skipped_counts[s]} for s in counts},
              "warnings": warnings_}
    _write_json(out / "report.json", report)
    summary = {"out": str(out), "format": fmt, "quality": quality if fmt == "jpeg" else None,
               "counts": counts, "skipped": skipped_counts, "warnings": warnings_}
    _write_json(out / "prepared.json", {
        "version": PREPARED_VERSION, "format": fmt, "quality": summary["quality"], "size": SIZE,
        "source": str(src.resolve()), "splits": {s: plan.described[s] for s in plan.units},
        "counts": counts, "classes": len(plan.classes), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return summary


def _merge_stats(folder: Path, units: list[_Unit]) -> dict[str, torch.Tensor] | None:
    """Mean image and RGB covariance eigen-decomposition from the shards' exact sums."""
    image = np.zeros((3, SIZE, SIZE), dtype=np.int64)
    outer = np.zeros((3, 3), dtype=np.int64)
    images = 0
    for unit in units:
        with np.load(folder / f"{unit.name}.stats.npz", allow_pickle=False) as part:
            image += part["image"]
            outer += part["outer"]
            images += int(part["images"])
    if images == 0:
        return None
    pixels = images * SIZE * SIZE
    rgb_mean = image.sum(axis=(1, 2)) / pixels
    covariance = outer / pixels - np.outer(rgb_mean, rgb_mean)
    eigval, eigvec = np.linalg.eigh(covariance)

    def f32(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    return {"mean_image": f32(image / images), "rgb_mean": f32(rgb_mean), "eigval": f32(eigval),
            "eigvec": f32(eigvec), "covariance": f32(covariance),
            "image_count": torch.tensor(images, dtype=torch.int64),
            "pixel_count": torch.tensor(pixels, dtype=torch.int64)}


def _tsv(text: str) -> str:
    """A TSV field: tabs and line breaks escaped."""
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _write_lines(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    shards.atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


def _write_json(path: Path, blob: dict) -> None:
    shards.atomic_write(path, lambda f: f.write((json.dumps(blob, indent=1) + "\n").encode()))
