"""``alexnet bench data``: images per second per core of our data paths, against torchvision and PIL.

"Per core" means measured in this one process with one intra-op thread
(``torch.set_num_threads(1)``, no DataLoader workers), so no rate is divided by anything; a
machine with N free cores runs about N such workers. Rates are images per CPU second of this
process (``time.process_time``), not per wall second: on a shared machine other processes
stretch wall time by whatever share of the core they take, while the CPU time this work needs
barely moves. Each rate is measured ``rounds`` times, interleaved with the baseline it is
compared to; rates are the medians over rounds and ratios the medians of the per-round ratios.

What is timed, on the given JPEGs replicated (by symbolic links) to at least ``min_images``:

* ``images_per_s_per_core``: our training input, prepared shards -> augmented uint8 batches:
  ``ShardReader.read_many`` of a random batch of 128, then a random 224x224 crop and mirror per
  image (``random_crop``, ``flip_lr``: the training pipeline's ``random_crop_offsets``, ``crop_at``,
  ``random_flips`` and ``flip_where``). In training the
  crop and mirror run on the accelerator; here they run on the same core. ``raw_...`` is the same
  from ``raw`` shards.
* ``torchvision_images_per_s_per_core``: torchvision's reference ImageNet training input,
  ``ImageFolder`` over the original JPEGs (PIL) with ``RandomResizedCrop(224)``,
  ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(...)``, batched by a ``DataLoader``
  (batch 128, ``num_workers=0``).
* ``prepare_images_per_s_per_core``: ``prepare_imagenet(workers=1)`` of the whole set into JPEG
  shards (decode, resize, encode, statistics, index, manifests).
* ``pil_prepare_images_per_s_per_core``: PIL ``open`` + ``convert("RGB")`` + shorter side to 256
  (bilinear, antialiased) + centre 256x256 crop + ``save`` as JPEG quality 90, one file each.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UsageError
from .common import log

BATCH = 128
CROP = 224
RAW_LIMIT = 1024  # raw shards hold this many images at most (196 KB each)


def bench_data(src: Path, json_out: bool = False, min_images: int = 1000, seconds: float = 2.0,
               rounds: int = 3) -> dict:
    """Measure the data paths on the images in ``src`` (see the module docstring); print the result
    (one JSON line if ``json_out``, else a short table) to stdout and return it as a dict.
    ``seconds`` is the time per data-path measurement per round."""
    start = time.perf_counter()
    files = source_images(Path(src))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="alexnet-bench-"))
    try:
        tree, linked = work / "src", replicate(files, work / "src", min_images)
        log(f"bench data: {len(linked)} images ({len(files)} sources) in {work}, {rounds} rounds, 1 thread")
        prepare, pil = measure_prepare(tree, linked, work, rounds)
        data = measure_data_paths(tree, work, rounds, seconds)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
    result = summarise(data, prepare, pil, len(linked), len(files), rounds, time.perf_counter() - start)
    print(json.dumps(result) if json_out else table(result), flush=True)
    return result


def source_images(src: Path) -> list[Path]:
    """The image files directly in ``src`` (or below it), sorted."""
    from ..data.decode import image_paths

    if not src.is_dir():
        raise UsageError(f"{src}: no such folder; pass --src DIR, a folder of JPEG images")
    files = [p for p in image_paths(src) if p.is_file()]  # hidden and system folders left out
    if not files:
        raise UsageError(f"{src}: holds no image files (.JPEG, .jpg, .png ...); pass a folder of images")
    if bad := next((p for p in files if not _opens(p)), None):
        raise UsageError(f"{bad}: not an image Pillow can read (empty, cut short or another format); every file is "
                         f"timed, so remove it from {src} or pass a folder of readable images")
    return files


def _opens(path: Path) -> bool:
    """Whether Pillow recognises ``path`` as an image (its header only: no decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
        return False


def replicate(files: list[Path], root: Path, min_images: int) -> list[Path]:
    """``root/train/<class>/<copy>_<name>`` links to ``files``, repeated to at least ``min_images``.

    The class is the name's prefix before ``_`` (``n01440764_tench.JPEG`` -> ``n01440764``), the
    layout both ImageFolder and ``prepare_imagenet`` read. Returns the links."""
    links = []
    for copy in range(max(1, math.ceil(min_images / len(files)))):
        for path in files:
            folder = root / "train" / (path.name.split("_")[0] if "_" in path.name else "images")
            folder.mkdir(parents=True, exist_ok=True)
            links.append(folder / f"{copy}_{path.name}")
            links[-1].symlink_to(path.resolve())
    return links


# --------------------------------------------------------------------------- prepare (c)


def measure_prepare(tree: Path, files: list[Path], work: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Per-round images/s of ``prepare_imagenet`` of ``tree`` (JPEG shards) and of the PIL baseline
    over its ``files``."""
    for path in files:  # page cache: both sides read the same warm files
        path.read_bytes()
    ours, pil = [], []
    for r in range(rounds):
        ours.append(len(files) / time_prepare(tree, work / "prepared"))
        pil.append(len(files) / time_pil_prepare(files, work / "pil"))
        log(f"  round {r + 1}: prepare {ours[-1]:.0f} img/s, PIL {pil[-1]:.0f} img/s")
    return ours, pil


def time_prepare(tree: Path, out: Path) -> float:
    """Seconds for ``prepare_imagenet`` of ``tree`` into a fresh ``out`` with one worker."""
    from ..data.imagenet.prepare import prepare_imagenet

    shutil.rmtree(out, ignore_errors=True)
    start = time.process_time()
    prepare_imagenet(tree, out, workers=1, fmt="jpeg", progress=False)
    return time.process_time() - start


def time_pil_prepare(files: list[Path], out: Path) -> float:
    """Seconds for the PIL baseline over ``files``, writing one JPEG each into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.process_time()
    for k, path in enumerate(files):
        pil_prepare(path, out / f"{k}.JPEG")
    return time.process_time() - start


def pil_prepare(path: Path, out: Path, size: int = 256) -> None:
    """The usual PIL way: RGB, shorter side to ``size`` (antialiased bilinear), centre crop, JPEG q90."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    width, height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    image.crop((left, top, left + size, top + size)).save(out, "JPEG", quality=90)


# --------------------------------------------------------------------------- data paths (a), (b)


def measure_data_paths(tree: Path, work: Path, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Per-round images/s of our batches from jpeg and raw shards and of torchvision's pipeline."""
    from ..data.imagenet.shards import ShardReader

    jpeg = ShardReader(work / "prepared" / "train")
    raw = ShardReader(write_raw_copy(jpeg, work / "raw"))
    steps = {"jpeg": shard_batches(jpeg), "raw": shard_batches(raw), "torchvision": torchvision_batches(tree)}
    for step in steps.values():  # warm-up: first batch, imports, caches
        step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, step in steps.items():
            rates[name].append(images_per_second(step, seconds))
        log(f"  round {r + 1}: " + ", ".join(f"{name} {v[-1]:.0f} img/s" for name, v in rates.items()))
    jpeg.close()
    raw.close()
    return rates


def write_raw_copy(reader, folder: Path) -> Path:
    """The first ``RAW_LIMIT`` records of ``reader`` rewritten as ``raw`` shards in ``folder``/train."""
    from ..data.imagenet.shards import encode, write_shard

    split = folder / "train"
    split.mkdir(parents=True)
    count = min(len(reader), RAW_LIMIT)
    for number, first in enumerate(range(0, count, 256)):
        indices = list(range(first, min(first + 256, count)))
        records = [encode(image.contiguous(), "raw") for image in reader.read_many(indices)]
        write_shard(split / f"shard-{number:05d}.bin", records, reader.labels[indices].tolist(), "raw")
    return split


def shard_batches(reader, seed: int = 0) -> Callable[[], int]:
    """A step that makes one augmented uint8 batch from ``reader``; returns its size."""
    from ..data.augment import flip_lr, random_crop

    generator = torch.Generator().manual_seed(seed)
    batch = min(BATCH, len(reader))

    def step() -> int:
        indices = torch.randint(0, len(reader), (batch,), generator=generator)
        images = reader.read_many(indices.tolist())
        out = flip_lr(random_crop(images, CROP, 0, generator), generator)
        return out.shape[0]

    return step


def torchvision_batches(tree: Path, seed: int = 0) -> Callable[[], int]:
    """A step that makes one batch with torchvision's reference ImageNet training pipeline."""
    from torchvision import datasets, transforms

    from ..data.pipeline import IMAGENET_MEAN, IMAGENET_STD  # torchvision's reference normalisation

    transform = transforms.Compose([transforms.RandomResizedCrop(CROP), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(str(tree / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=min(BATCH, len(dataset)), shuffle=True,
                                         num_workers=0, generator=torch.Generator().manual_seed(seed))
    batches = iter(loader)

    def step() -> int:
        nonlocal batches
        try:
            images, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, _ = next(batches)
        return images.shape[0]

    return step


def images_per_second(step: Callable[[], int], seconds: float) -> float:
    """Run ``step`` (which returns how many images it made) for about ``seconds`` of CPU time; images per CPU second."""
    images, start = 0, time.process_time()
    while True:
        images += step()
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return images / elapsed


# --------------------------------------------------------------------------- result


def summarise(data: dict[str, list[float]], prepare: list[float], pil: list[float], images: int,
              sources: int, rounds: int, seconds: float) -> dict:
    """The result dict: median rates over the rounds and their ratios."""
    from ..data.imagenet import shards

    jpeg, raw, tv = (statistics.median(data[k]) for k in ("jpeg", "raw", "torchvision"))
    ours, base = statistics.median(prepare), statistics.median(pil)

    def ratio(a: list[float], b: list[float]) -> float:  # round by round: both sides saw the same load
        return round(statistics.median(x / y for x, y in zip(a, b)), 2)

    return {
        "bench": "data", "images": images, "source_images": sources, "batch_size": BATCH, "crop": CROP,
        "rounds": rounds, "threads": 1, "jpeg_codec": "simplejpeg" if shards.simplejpeg else "torchvision",
        "images_per_s_per_core": round(jpeg, 1), "raw_images_per_s_per_core": round(raw, 1),
        "torchvision_images_per_s_per_core": round(tv, 1),
        "speedup_per_core_vs_torchvision": ratio(data["jpeg"], data["torchvision"]),
        "raw_speedup_per_core_vs_torchvision": ratio(data["raw"], data["torchvision"]),
        "prepare_images_per_s_per_core": round(ours, 1), "pil_prepare_images_per_s_per_core": round(base, 1),
        "prepare_speedup_vs_pil": ratio(prepare, pil), "seconds": round(seconds, 1),
    }


def table(result: dict) -> str:
    """The result as a few human-readable lines."""
    r = result
    return "\n".join([
        f"data path, images/s per core ({r['images']} images, median of {r['rounds']} rounds):",
        f"  ours, jpeg shards -> 224 crops + flips  {r['images_per_s_per_core']:>9.1f}"
        f"   {r['speedup_per_core_vs_torchvision']:.2f}x torchvision",
        f"  ours, raw shards                        {r['raw_images_per_s_per_core']:>9.1f}"
        f"   {r['raw_speedup_per_core_vs_torchvision']:.2f}x torchvision",
        f"  torchvision ImageFolder + PIL           {r['torchvision_images_per_s_per_core']:>9.1f}",
        "prepare, images/s per core:",
        f"  alexnet prepare imagenet (jpeg)         {r['prepare_images_per_s_per_core']:>9.1f}"
        f"   {r['prepare_speedup_vs_pil']:.2f}x PIL",
        f"  PIL resize + crop + save JPEG q90       {r['pil_prepare_images_per_s_per_core']:>9.1f}",
    ])
