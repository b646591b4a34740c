"""Where ILSVRC-2012 images come from: the official archives, the devkit, extracted folders or any
ImageFolder tree -> a ``Plan`` (every image with its label, cut into units of work).

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

A ``Plan`` lists the classes, their names and, per split, the ``Unit`` s (one shard's worth of
images each); ``prepare.py`` turns it into shards and statistics.
"""

from __future__ import annotations

import importlib.resources
import io
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet.data.decode import is_image_name, is_skipped_folder, walk
from alexnet.data.decode import reason as _reason
from alexnet.errors import UsageError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
META_MAT = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
OFFICIAL_COUNTS = {"train": 1_281_167, "val": 50_000}
SPLITS = ("train", "val")
VAL_FOLDERS = ("val", "valid", "validation", "test")  # the held-out split's folder, first found wins
SHARD_IMAGES = 1000  # images per shard where the source has no natural unit (folders, val tar)
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.", re.IGNORECASE)
_ACCEPTED = (
    f"expected a folder holding {TRAIN_TAR} and/or {VAL_TAR} (+ {DEVKIT_TAR}), or train/<class>/ "
    f"and/or val/<class>/ folders (val/ may be flat with the devkit beside it)"
)


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
    return Devkit(words=dict(leaves.values()),
                  val_wnids=tuple(leaves[i][0] for i in truth_ids), where=str(path))


def imagenet_classes() -> dict[str, str]:
    """The 1,000 ILSVRC-2012 classes, wnid -> short name, in the standard (sorted wnid) order."""
    text = importlib.resources.files("alexnet.data.imagenet").joinpath("classes.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return {wnid: name for _, wnid, name in rows}


@dataclass(frozen=True)
class Unit:
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


@dataclass
class Plan:
    root: Path
    classes: list[str]
    names: dict[str, str]
    units: dict[str, list[Unit]] = field(default_factory=dict)
    skipped: dict[str, list[dict]] = field(default_factory=dict)  # known before decoding
    official: dict[str, bool] = field(default_factory=dict)
    described: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def make_plan(src: Path, shard_size: int) -> Plan:
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
    ignored: list[str] = []  # files in class folders that are not images by name
    train = _train_units(train_kind, train_path, root, shard_size, ignored) if train_kind else None
    if train is not None:
        classes = train[0]
    elif devkit is not None:
        classes = sorted(devkit.words)
    else:
        classes = _class_folders(val_path)
    known = imagenet_classes()
    names = {c: (devkit.words.get(c) if devkit else None) or known.get(c) or c for c in classes}
    plan = Plan(root, classes, names)
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
        plan.units["val"], plan.skipped["val"] = _val_units(val_kind, val_path, root, devkit, classes, shard_size,
                                                            ignored)
        plan.official["val"] = val_kind == "tar" or all_known
        plan.described["val"] = _display(val_path, root)
    else:
        plan.warnings.append(f"no val split in {root}")
    _note_ignored(plan, ignored)
    for line in plan.warnings:
        print(f"note: {line}", file=sys.stderr)
    return plan


def _find_root(src: Path) -> Path:
    """``src``, or its single visible subfolder, whichever holds a recognised layout."""
    if not src.exists():
        raise UsageError(f"{src}: no such folder; {_ACCEPTED}")
    if not src.is_dir():
        if is_archive_name(src.name) and src.name not in (TRAIN_TAR, VAL_TAR):
            raise UsageError(f"{src}: is an archive; extract it (tar xf, unzip) and pass the folder it makes; "
                             f"{_ACCEPTED}")
        raise UsageError(f"{src}: is a file, pass the folder that holds it; {_ACCEPTED}")
    if _has_layout(src):
        return src
    visible = sorted(p for p in src.iterdir() if not is_skipped_folder(p.name))  # __MACOSX/ beside an unzipped folder
    subfolders = [p for p in visible if p.is_dir()]
    if len(subfolders) == 1 and _has_layout(subfolders[0]):
        return subfolders[0]
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in visible[:10]) or "nothing"
    more = f" ... ({len(visible)} entries)" if len(visible) > 10 else ""
    if any(p.is_file() and is_image_name(p.name) for p in visible):  # photos, not yet sorted into classes
        raise UsageError(f"{src}: holds image files but no class folders (it holds {shown}{more}); put each "
                         "class's images in its own folder, train/<class>/, and some of each in val/<class>/")
    if subfolders and any(is_image_name(f.name) for f in subfolders[0].iterdir()):  # the class folders themselves
        if src.name in ("train", *VAL_FOLDERS):
            raise UsageError(f"{src}: is the {src.name}/ split itself (it holds {shown}{more}); pass the folder "
                             f"that holds train/ and val/: {src.parent}")
        raise UsageError(f"{src}: holds class folders ({shown}{more}) but no train/ or val/ split: put them in "
                         "train/<class>/, with some photos of each class in val/<class>/ for validation")
    kaggle = src / "ILSVRC" / "Data" / "CLS-LOC"  # Kaggle's ImageNet download, unzipped
    if kaggle.is_dir():
        raise UsageError(f"{src}: no ImageNet layout found here; for Kaggle's ImageNet pass --src {kaggle} (its flat "
                         f"val/ needs {DEVKIT_TAR} beside train/, or val/<wnid>/ folders)")
    raise UsageError(f"{src}: no ImageNet layout found (it holds {shown}{more}); {_ACCEPTED}")


def is_archive_name(name: str) -> bool:
    return name.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".7z", ".rar"))


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
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_skipped_folder(p.name))


def _display(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) + ("/" if path.is_dir() else "")


def _list_files(folder: Path, root: Path, ignored: list[str] | None = None) -> list[str]:
    """Image files under ``folder`` (recursively, following links, hidden and system folders left out), relative
    to ``root``, sorted; the other files, but for hidden ones and a file manager's own, are added to ``ignored``."""
    found = []
    for where, files in walk(folder):
        base = Path(where).relative_to(root)
        found.extend(str(base / name) for name in files if is_image_name(name))
        if ignored is not None:
            ignored.extend(str(base / name) for name in files if not is_image_name(name) and not _is_junk(name))
    return sorted(found)


def _is_junk(name: str) -> bool:
    """What file managers leave in every folder (not worth a note when left out)."""
    return name.startswith(".") or name.lower() in ("thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r")


def _note_ignored(plan: Plan, ignored: list[str]) -> None:
    if ignored:
        shown = ", ".join(sorted(ignored)[:3])
        plan.warnings.append(f"{len(ignored)} file(s) are left out: their names are not of image files (e.g. "
                             f"{shown}); give photos an image suffix (.jpg, .png ...) to include them")


def _tar_members(path: Path) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of the regular files in the uncompressed tar ``path``."""
    try:
        with tarfile.open(path, "r:") as archive:
            return [(m.name, m.offset_data, m.size) for m in archive if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as error:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        why = "gzip-compressed: decompress it (gunzip) to the plain tar" if gzipped else _reason(error)
        raise UsageError(f"{path}: not a readable uncompressed tar archive ({why})") from None


def _train_units(kind: str, path: Path, root: Path, shard_size: int,
                 ignored: list[str]) -> tuple[list[str], list[Unit]]:
    """(sorted class names, units): one unit per class tar, else ``shard_size`` files per unit."""
    if kind == "tar":
        members = _tar_members(path)
        tars = [(Path(n).name.removesuffix(".tar"), f"{TRAIN_TAR}/{n}", str(path), off, size)
                for n, off, size in members if n.endswith(".tar")]
        if not tars:
            images = [n for n, _, _ in members if is_image_name(Path(n).name)][:2]
            found = f"it holds images ({', '.join(images)}): extract it into train/ and prepare that, or " if images \
                else ""
            raise UsageError(f"{path}: holds no per-class tars (n01440764.tar ...); {found}is it {TRAIN_TAR}?")
    elif classes := _class_folders(path):
        items = [(rel, label) for label, c in enumerate(classes) for rel in _list_files(path / c, root, ignored)]
        return classes, _chunk("train", "files", str(root), "", items, shard_size)
    else:
        tars = [(p.stem, str(p.relative_to(root)), str(p), 0, p.stat().st_size) for p in path.iterdir()
                if p.is_file() and p.suffix == ".tar" and not p.name.startswith(".")]
        if not tars:
            raise UsageError(f"{path}: neither class folders (train/<class>/) nor per-class tars "
                             f"(train/<wnid>.tar); {_ACCEPTED}")
    tars.sort()
    units = [Unit("train", label, "tar", archive, "", ((display, label, offset, size),))
             for label, (_, display, archive, offset, size) in enumerate(tars)]
    return [c for c, *_ in tars], units


def _chunk(split: str, kind: str, where: str, prefix: str, items: list, shard_size: int) -> list[Unit]:
    return [Unit(split, number, kind, where, prefix, tuple(items[start:start + shard_size]))
            for number, start in enumerate(range(0, len(items), shard_size))]


def _val_units(kind: str, path: Path, root: Path, devkit: Devkit | None, classes: list[str],
               shard_size: int, ignored: list[str]) -> tuple[list[Unit], list[dict]]:
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
            for rel in _list_files(path / wnid, root, ignored):
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
