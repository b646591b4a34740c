"""Prepared ImageNet: a ``Plan`` (``sources.py``) -> shards, per-pixel mean image and RGB PCA.

``prepare_imagenet(src, out)`` does the paper's offline step once: every image is decoded,
its shorter side resized to 256 and the centre 256x256 kept (``decode.decode_stored``), and the
result stored in shards (``alexnet.data.shards``: JPEG quality 90 by default, or ``raw`` uint8).
Nothing is fetched from the internet. Sources, labels and image handling: ``sources.py`` and
``decode.py``. Truncated, corrupt, empty and non-image files are skipped and listed, with the
reason, in ``report.json``; one bad file never stops the run.

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
import io
import json
import os
import re
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from alexnet.data.decode import BadImage, decode_stored, is_image_name, quiet_decoders
from alexnet.data.decode import reason as _reason
from alexnet.data.imagenet import shards
from alexnet.data.imagenet.sources import OFFICIAL_COUNTS, SHARD_IMAGES, SPLITS, Plan, Unit, make_plan
from alexnet.data.pool import make_pool
from alexnet.errors import UsageError
from alexnet.files import atomic_write
from alexnet.runtime import worker_count

SIZE = shards.SIZE
PREPARED_VERSION = 2  # 2: centre square resized (was: resize, then crop); stats before encoding
_SHARD_FILE = re.compile(r"shard-\d+(\.bin|\.idx\.npz|\.done\.json|\.stats\.npz)")


def prepare_imagenet(src: Path, out: Path, workers: int | None = None, fmt: str = "jpeg",
                     quality: int = 90, progress: bool = True, shard_size: int = SHARD_IMAGES,
                     resize: str = "center") -> dict:
    """Prepare ``src`` into ``out`` (see the module docstring); return a summary dict with
    ``out``, ``format``, ``quality``, ``counts`` and ``skipped`` per split, ``seconds``,
    ``images_per_s``, ``shards_built``, ``shards_reused`` and ``warnings``. ``resize``: each image's centre
    square (the paper) or the whole image squashed (Caffe's data) becomes the stored 256x256."""
    start = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out).expanduser()
    workers = _check_options(workers, fmt, quality, shard_size)
    if resize not in ("center", "squash"):
        raise UsageError(f"resize must be center or squash; got {resize!r}")
    plan = make_plan(src, shard_size)
    _check_out(out, src, plan)
    _prepare_out(out, plan)
    units = [unit for split in SPLITS for unit in plan.units.get(split, [])]
    keys = {(u.split, u.number): unit_key(u, fmt, quality, resize) for u in units}
    todo = [u for u in units if not _is_complete(out / u.split, u, keys[u.split, u.number])]
    if progress:
        found = ", ".join(f"{s} from {plan.described[s]} ({len(plan.units[s])} shards)" for s in plan.units)
        reused = f"; {len(units) - len(todo)} shards already done" if len(todo) < len(units) else ""
        print(f"preparing {found} into {out} with {min(workers, max(len(todo), 1))} workers{reused}",
              file=sys.stderr)
    failures = _build_units(todo, out, keys, (fmt, quality, resize), workers, progress, len(units))
    if failures:
        first_unit, reason = failures[0]
        raise UsageError(
            f"{len(failures)} of {len(todo)} shards failed (first: {first_unit.split}/{first_unit.name}: "
            f"{reason}); finished shards are kept: re-run the same command to resume")
    summary = _finish(out, plan, fmt, quality, src, resize)
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


def unit_key(unit: Unit, fmt: str, quality: int, resize: str = "center") -> str:
    """A hash of what this shard holds and how: equal keys mean an equal shard."""
    how = [PREPARED_VERSION, SIZE, fmt, quality if fmt == "jpeg" else None]
    if resize != "center":  # (the centre square keeps the keys of shards prepared before squash existed)
        how.append(resize)
    text = json.dumps([*how, unit.kind, unit.prefix, unit.items], ensure_ascii=True)
    return hashlib.sha1(text.encode()).hexdigest()


def _check_options(workers: int | None, fmt: str, quality: int, shard_size: int) -> int:
    """Validate the options; return the worker count."""
    if fmt not in shards.FORMATS:
        raise UsageError(f"unknown format {fmt!r}; expected one of {', '.join(shards.FORMATS)}")
    if not 1 <= quality <= 100:
        raise UsageError(f"JPEG quality must be 1..100, got {quality}")
    if shard_size < 1:
        raise UsageError(f"shard size must be a positive number of images, got {shard_size}")
    if workers is not None and workers < 1:  # left out (None): all cores
        raise UsageError(f"--workers must be at least 1, got {workers}; or leave it out for all cores")
    return worker_count(workers)


def _check_out(out: Path, src: Path, plan: Plan) -> None:
    """Refuse an output folder that is the source, lies inside one of its splits (its files would become a class
    of the next listing), or holds a finished preparation of another source (hours of work, not overwritten)."""
    if out.resolve() == plan.root.resolve():
        raise UsageError(f"{out}: the output folder is the source folder; pass another --out DIR")
    for split, shown in plan.described.items():
        folder = (plan.root / shown).resolve()
        if folder.is_dir() and out.resolve().is_relative_to(folder):
            raise UsageError(f"--out {out} is inside the source's {split} folder {plan.root / shown}; its files would "
                             "be listed with the photos: pass an --out outside it")
    try:
        made = json.loads((out / "prepared.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return  # nothing finished there (or not ours): prepare resumes into it
    if made and Path(made) != src.resolve():
        raise UsageError(f"--out {out} already holds the preparation of {made}; pass another --out DIR for {src}, "
                         "or delete that folder first")


def _prepare_out(out: Path, plan: Plan) -> None:
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


def _is_complete(folder: Path, unit: Unit, key: str) -> bool:
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


def _build_units(todo: list[Unit], out: Path, keys: dict, how: tuple[str, int, str], workers: int,
                 progress: bool, total: int) -> list[tuple[Unit, str]]:
    """Build ``todo`` (in a process pool if more than one worker); return the failures."""
    from tqdm import tqdm

    failures: list[tuple[Unit, str]] = []
    if not todo:
        return failures
    jobs = [(u, str(out / u.split), *how, keys[u.split, u.number]) for u in todo]  # how: format, quality, resize
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


def _build_unit(unit: Unit, folder: str, fmt: str, quality: int, resize: str, key: str) -> dict:
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
                image = decode_stored(data, resize=resize)
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
    atomic_write(done_path, lambda f: f.write(json.dumps(done).encode()))
    return {"records": len(kept), "skipped": len(skipped)}


def _unit_images(unit: Unit) -> Iterator[tuple[str, int, bytes | BadImage]]:
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
        atomic_write(path, lambda f: np.savez(f, images=np.array(self.images), image=self.image.numpy(),
                                                     outer=self.outer.numpy()))


def _finish(out: Path, plan: Plan, fmt: str, quality: int, src: Path, resize: str = "center") -> dict:
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
            from safetensors.torch import save

            blob = save(stats, metadata={
                "scale": "0..255", "covariance": "population covariance of all training pixels (RGB)",
                "eigvec": "columns are eigenvectors; eigval ascending (numpy.linalg.eigh)"})
            atomic_write(out / "stats.safetensors", lambda f: f.write(blob))
    _write_lines(out / "classes.tsv", ["index\twnid\tname"] + [
        f"{i}\t{_tsv(c)}\t{_tsv(plan.names[c])}" for i, c in enumerate(plan.classes)])
    report = {"skipped": skipped,
              "counts": {s: {"images": counts[s], "skipped": skipped_counts[s]} for s in counts},
              "warnings": warnings_}
    _write_json(out / "report.json", report)
    summary = {"out": str(out), "format": fmt, "quality": quality if fmt == "jpeg" else None,
               "counts": counts, "skipped": skipped_counts, "warnings": warnings_}
    _write_json(out / "prepared.json", {
        "version": PREPARED_VERSION, "format": fmt, "quality": summary["quality"], "size": SIZE, "resize": resize,
        "source": str(src.resolve()), "splits": {s: plan.described[s] for s in plan.units},
        "counts": counts, "classes": len(plan.classes), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return summary


def _merge_stats(folder: Path, units: list[Unit]) -> dict[str, torch.Tensor] | None:
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
    atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


def _write_json(path: Path, blob: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(blob, indent=1) + "\n").encode()))
