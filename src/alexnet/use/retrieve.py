"""Retrieval: the gallery images nearest each query image in fc7 (the paper's Figure 4, right).

Section 6.1: "If two images produce feature activation vectors [of the last hidden layer] with
a small Euclidean separation, we can say that the higher levels of the neural network consider
them to be similar." Every image goes through the checkpoint's evaluation preprocessing (the
centre view); distances are exact float64 differences (``nearest_neighbours``).

The gallery's features are cached in one file, ``DIR/.alexnet-features-<key>.safetensors`` (or,
where DIR is not writable, ``$ALEXNET_DATA/retrieve/<DIR's name>-<hash of its path>-<key>.safetensors``).
``key`` is a hash of the network's weights and its input pipeline, so another checkpoint (or
retrained weights) gets its own file and computes every feature afresh. Inside, rows are keyed
by the sha1 of each image file's bytes; a table path -> (size, mtime, sha1) lets a second run
skip hashing files that did not change. A new or changed file is decoded and run through the
network alone; rows of files that are gone are dropped; renamed or copied files reuse their row.
Unreadable gallery files are skipped with a line on stderr (remembered by sha1, so not decoded
again). An exact copy of a query in the gallery (the same bytes) is its first neighbour, at
distance 0: the query takes that gallery row as its own features.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.images import image_files, read_batches
from ..files import atomic_write, cache_root
from ..runtime import log
from .predictor import Predictor

LAYER = "fc7"  # section 6.1: the last 4096-dimensional hidden layer
CACHE_VERSION = "1"  # part of the key: a change to what the cache holds starts a new file


def nearest_neighbours(queries: torch.Tensor, gallery: torch.Tensor, k: int,
                       exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and distances (both (Q, k)) of the ``k`` rows of ``gallery`` nearest each row of
    ``queries`` in Euclidean distance, nearest first; ties go to the lower gallery index.

    Distances are exact differences in float64, not the |a|^2 + |b|^2 - 2ab expansion, which
    loses near-identical vectors to rounding. ``exclude[q, g]`` True drops gallery row g for
    query q (the query's own file); ``k`` shrinks to what every query has left.
    """
    dist = torch.cdist(queries.double()[None], gallery.double()[None],
                       compute_mode="donot_use_mm_for_euclid_dist")[0]
    excluded = 0
    if exclude is not None:
        dist = dist.masked_fill(exclude, math.inf)
        excluded = int(exclude.sum(1).max()) if len(exclude) else 0
    order = dist.argsort(dim=1, stable=True)[:, :min(k, gallery.shape[0] - excluded)]
    return order, dist.gather(1, order)


def query_features(predictor: Predictor, batch, gallery: GalleryFeatures) -> torch.Tensor:
    """fc7 of the batch's readable queries; a query with the bytes of a gallery file takes that
    file's row (so an exact copy is at distance 0 whatever the batch arithmetic)."""
    feats = predictor.features(batch.images, LAYER)
    readable = [path for path, error in zip(batch.files, batch.errors) if not error]
    for i, path in enumerate(readable):
        row = gallery.row_of.get(sha1_file(path))  # read a moment ago, so readable
        if row is not None:
            feats[i] = gallery.features[row]
    return feats


@dataclass
class GalleryFeatures:
    files: list[Path]  # the readable gallery images, sorted
    features: torch.Tensor  # float32 (len(files), D)
    row_of: dict[str, int]  # sha1 of a file's bytes -> its row
    computed: int  # how many images this call ran through the network


def gallery_features(predictor: Predictor, folder: Path) -> GalleryFeatures:
    """fc7 of every readable image under ``folder``, from the cache where it holds them (see the
    module docstring); the cache is rewritten when anything changed."""
    files, _ = image_files([folder])
    key = network_key(predictor)
    path = cache_path(folder, key)
    cached = read_cache(path)
    table = {}  # relative path -> {"size", "mtime_ns", "sha1"}
    for file in files:
        rel = file.relative_to(folder).as_posix()
        try:
            stat = file.stat()
            old = cached["table"].get(rel)
            same = old and old["size"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns
            digest = old["sha1"] if same else sha1_file(file)
        except OSError as error:
            log(f"alexnet retrieve: gallery file {file} skipped: {error.strerror or error}")
            continue
        table[rel] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha1": digest}
    rows, bad = cached["rows"], dict(cached["bad"])  # sha1 -> feature row / reason
    todo = sorted({e["sha1"]: f for f, e in table.items() if e["sha1"] not in rows and e["sha1"] not in bad}.items())
    start = time.perf_counter()
    for batch in read_batches([folder / rel for _, rel in todo], predictor.pipeline, predictor.batch_size,
                              progress="gallery" if len(todo) > predictor.batch_size else None):
        feats = iter(predictor.features(batch.images, LAYER))
        for file, error in zip(batch.files, batch.errors):
            digest = table[file.relative_to(folder).as_posix()]["sha1"]
            if error:
                bad[digest] = error
            else:
                rows[digest] = next(feats)
    if todo:
        seconds = time.perf_counter() - start
        log(f"retrieve: gallery {folder}: {len(todo)} new contents decoded and run through the network in "
            f"{seconds:.1f} s ({len(todo) / max(seconds, 1e-9):.1f} images/s); {len(table) - len(todo)} files "
            "from the cache or copies")
    for rel, entry in table.items():
        if entry["sha1"] in bad:
            log(f"alexnet retrieve: gallery file {folder / rel} skipped: {bad[entry['sha1']]}")
    kept = {e["sha1"] for e in table.values()}
    rows = {d: r for d, r in rows.items() if d in kept}
    bad = {d: r for d, r in bad.items() if d in kept}
    changed = todo or rows.keys() != cached["rows"].keys() or table != cached["table"]
    if changed and rows:  # a gallery with no readable image is refused (commands/retrieve.py): nothing written
        write_cache(path, folder, table, rows, bad)
    good = [rel for rel, e in table.items() if e["sha1"] in rows]
    digests = [table[rel]["sha1"] for rel in good]
    feats = torch.stack([rows[d] for d in digests]) if good else torch.zeros(0, 0)
    return GalleryFeatures([folder / rel for rel in good], feats, {d: i for i, d in enumerate(digests)}, len(todo))


def network_key(predictor: Predictor) -> str:
    """A hash of what the features depend on: the weights, the input pipeline, the layer."""
    digest = hashlib.sha1(f"{CACHE_VERSION} {LAYER} {predictor.precision}".encode())
    for name, tensor in sorted(predictor.model.state_dict().items()):
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    for name, value in sorted(predictor.pipeline.state_dict().items()):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().float().contiguous().numpy())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def cache_path(folder: Path, key: str) -> Path:
    """Beside the gallery, or under $ALEXNET_DATA/retrieve when the gallery folder is read-only (no
    write permission bit: a shared data set stays untouched even for root, whom ``access`` lets write)."""
    if os.access(folder, os.W_OK) and folder.stat().st_mode & 0o222:
        return folder / f".alexnet-features-{key}.safetensors"
    where = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return cache_root() / "retrieve" / f"{folder.resolve().name}-{where}-{key}.safetensors"


def read_cache(path: Path) -> dict:
    """``{"table", "rows", "bad"}`` from a cache file; empty when there is none or it is unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    empty = {"table": {}, "rows": {}, "bad": {}}
    if not path.is_file():
        return empty
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["alexnet"])
            feats = f.get_tensor("features") if meta["sha1"] else None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
        log(f"retrieve: cache {path} unreadable ({type(error).__name__}); recomputing the gallery's features")
        return empty
    rows = {d: feats[i] for i, d in enumerate(meta["sha1"])}
    return {"table": meta["table"], "rows": rows, "bad": meta["bad"]}


def write_cache(path: Path, folder: Path, table: dict, rows: dict, bad: dict) -> None:
    """The cache file, written atomically; a folder that cannot be written only costs recomputing."""
    from safetensors.torch import save

    digests = sorted(rows)
    feats = torch.stack([rows[d] for d in digests]).contiguous() if digests else torch.zeros(0)
    meta = {"table": table, "sha1": digests, "bad": bad, "gallery": str(folder)}
    data = save({"features": feats}, metadata={"alexnet": json.dumps(meta)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
    except OSError as error:
        log(f"retrieve: could not write the feature cache {path} ({error.strerror or error}); "
            "features will be computed again next time")


def sha1_file(path: Path) -> str:
    """The sha1 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()

