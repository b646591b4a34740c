"""`alexnet bench data`: images per second per core of our data paths, against torchvision and PIL.

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
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import phases
from .errors import UsageError

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
        _log(f"bench data: {len(linked)} images ({len(files)} sources) in {work}, {rounds} rounds, 1 thread")
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
    from .data.decode import is_image_name

    if not src.is_dir():
        raise UsageError(f"{src}: no such folder; pass --src DIR, a folder of JPEG images")
    files = sorted(p for p in src.rglob("*") if is_image_name(p.name) and p.is_file())
    if not files:
        raise UsageError(f"{src}: holds no image files (.JPEG, .jpg, .png ...); pass a folder of images")
    return files


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
        _log(f"  round {r + 1}: prepare {ours[-1]:.0f} img/s, PIL {pil[-1]:.0f} img/s")
    return ours, pil


def time_prepare(tree: Path, out: Path) -> float:
    """Seconds for ``prepare_imagenet`` of ``tree`` into a fresh ``out`` with one worker."""
    from .data.prepare import prepare_imagenet

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
    from .data.shards import ShardReader

    jpeg = ShardReader(work / "prepared" / "train")
    raw = ShardReader(write_raw_copy(jpeg, work / "raw"))
    steps = {"jpeg": shard_batches(jpeg), "raw": shard_batches(raw), "torchvision": torchvision_batches(tree)}
    for step in steps.values():  # warm-up: first batch, imports, caches
        step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, step in steps.items():
            rates[name].append(images_per_second(step, seconds))
        _log(f"  round {r + 1}: " + ", ".join(f"{name} {v[-1]:.0f} img/s" for name, v in rates.items()))
    jpeg.close()
    raw.close()
    return rates


def write_raw_copy(reader, folder: Path) -> Path:
    """The first ``RAW_LIMIT`` records of ``reader`` rewritten as ``raw`` shards in ``folder``/train."""
    from .data.shards import encode, write_shard

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
    from .data.augment import flip_lr, random_crop

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

    from .data.pipeline import IMAGENET_MEAN, IMAGENET_STD  # torchvision's reference normalisation

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
    from .data import shards

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


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# =========================================================================== bench model
#
# `alexnet bench model`: training-step and inference images/s of the paper's network with this
# project's settings (train_step: bf16 autocast, channels_last, our LRN, SGD momentum foreach; plus
# whole-network torch.compile and, on CUDA, CUDA graphs where they are faster) against
# torchvision.models.alexnet() in a plain eager fp32 loop, same batch, threads and process. Each
# variant is warmed up first (its compile time reported), then timed for ``steps`` steps per round,
# rounds interleaved; rates are medians over rounds, speedups medians of the per-round ratios of the
# fastest of our variants to torchvision.


def bench_model(batch: int = 128, steps: int = 10, rounds: int = 3, device: str = "auto",
                compile: bool | None = None, width: float = 1.0, json_out: bool = False) -> dict:
    """Measure (see above); print one JSON line (``json_out``) or a short table, return the dict.
    ``compile=None``: also try torch.compile on CUDA, eager only on the CPU."""
    from .runtime import pick_device

    dev = pick_device(device)
    compile = dev.type == "cuda" if compile is None else compile
    config, ours, theirs = _model_pair(width, dev)
    x = torch.randn(batch, 3, CROP, CROP, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    train_variants, infer_variants = _model_variants(config, ours, theirs, x, y, compile)
    compile_s: dict[str, float] = {}
    calls = min(3, steps)  # warm-up calls per variant
    train = _rounds(_warm(train_variants, compile_s, "train", calls), batch, steps, rounds, dev)
    infer = _rounds(_warm(infer_variants, compile_s, "inference", calls), batch, steps, rounds, dev)
    result = _model_summary(train, infer, compile_s, config, batch, steps, rounds, dev, width)
    print(json.dumps(result) if json_out else model_table(result), flush=True)
    return result


def _model_pair(width: float, dev: torch.device):
    """The paper recipe's config, our paper network (channels_last) and torchvision's alexnet."""
    import torchvision

    from .config import build_config, read_recipe
    from .model import AlexNet

    config = build_config(read_recipe("paper"), ["model.num_classes=1000", f"model.width={width}"])
    ours = AlexNet(config.model).to(dev, memory_format=torch.channels_last)
    return config, ours, torchvision.models.alexnet().to(dev)


def _model_variants(config, ours, theirs, x, y, compile: bool) -> tuple[dict, dict]:
    """name -> a no-argument step, for training and for inference. Ours run ``train.train_step`` on a
    run-like namespace; torchvision runs zero_grad / cross-entropy / backward / step in fp32."""
    from types import SimpleNamespace

    from torch.nn import functional as F

    from .resume import Progress
    from .runtime import Dist, autocast
    from .train import make_optimizer, train_step

    dev, precision = x.device, config.train.precision
    ours_x = x.contiguous(memory_format=torch.channels_last)  # what the pipeline hands the network
    nets = {"eager": ours}
    if compile:
        nets["compiled"] = torch.compile(ours)
    run = SimpleNamespace(config=config, device=dev, model=ours, net=ours, optimizer=make_optimizer(ours, config.optim),
                          scaler=torch.amp.GradScaler(dev.type, enabled=precision == "fp16"), ddp=Dist(),
                          progress=Progress())
    sgd = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def ours_train(net):
        def step():
            ours.train()
            run.net = net
            train_step(run, ours_x, y)
        return step

    def theirs_train():
        theirs.train()
        sgd.zero_grad()
        F.cross_entropy(theirs(x), y).backward()
        sgd.step()

    def ours_infer(net):
        def step():
            ours.eval()
            with torch.inference_mode(), autocast(dev, precision):
                net(ours_x)
        return step

    def theirs_infer():
        theirs.eval()
        with torch.inference_mode():
            theirs(x)

    train = {f"ours_{k}": ours_train(v) for k, v in nets.items()} | {"torchvision": theirs_train}
    infer = {f"ours_{k}": ours_infer(v) for k, v in nets.items()} | {"torchvision": theirs_infer}
    if precision == "bf16":  # inference needs no fp32 master weights: cast them once, not every call
        infer["ours_bf16_weights"] = _bf16_infer(ours, ours_x)
    # the paper's two-GPU split (model.tower_devices, eager; both towers on one device where only one
    # exists): its speed against the groups=2 network ("ours_eager"), issue 14
    split = _tower_split(ours, dev)
    split_run = SimpleNamespace(**{**vars(run), "model": split, "net": split,
                                   "optimizer": make_optimizer(split, config.optim)})
    split_infer = ours_infer(split)  # built once, not inside the timed call
    train["ours_tower_split"] = lambda: (split.train(), train_step(split_run, ours_x, y))
    infer["ours_tower_split"] = lambda: (split.eval(), split_infer())
    if compile and dev.type == "cuda":  # CUDA graphs replay the whole forward pass as one launch
        infer["ours_cudagraphs"] = ours_infer(torch.compile(ours, mode="reduce-overhead"))
    return train, infer


def _tower_split(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    """``model`` with the same weights as the paper's two-device split: on cuda:0 and cuda:1 where
    there are two GPUs, else both towers on ``dev``."""
    import dataclasses

    from .model import AlexNet

    first = torch.device("cuda", 0) if dev.type == "cuda" else dev
    second = torch.device("cuda", 1) if dev.type == "cuda" and torch.cuda.device_count() > 1 else first
    split = AlexNet(dataclasses.replace(model.config, tower_devices=f"{first},{second}"))
    split.load_state_dict(model.state_dict())
    return split.to(memory_format=torch.channels_last)


def _bf16_infer(model: torch.nn.Module, x: torch.Tensor):
    """Inference with a bfloat16 copy of the weights and input, no autocast (which casts every weight
    on every call)."""
    import copy

    net = copy.deepcopy(model).to(torch.bfloat16).eval()
    xb = x.to(torch.bfloat16)

    def step():
        with torch.inference_mode():
            net(xb)
    return step


def _warm(variants: dict, compile_s: dict, kind: str, calls: int = 3) -> dict:
    """Run each variant ``calls`` times (compilation, autotuning, caches); record the seconds of
    compiling variants in ``compile_s``; drop a variant that fails (torch.compile on a machine
    without a compiler, say) with a message: eager always remains."""
    kept = {}
    for name, step in variants.items():
        start = time.perf_counter()
        try:
            for _ in range(calls):
                step()
            _sync()
        except Exception as err:  # noqa: BLE001 - a failing compiled variant means "eager only"
            if name in ("ours_eager", "torchvision"):
                raise
            _log(f"bench model: {kind} {name} failed ({type(err).__name__}: {str(err)[:200]}); left out")
            continue
        if name.endswith(("compiled", "cudagraphs")):  # eager variants have nothing to compile
            compile_s[f"{kind}_{name.removeprefix('ours_')}"] = round(time.perf_counter() - start, 1)
        kept[name] = step
    return kept


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _rounds(variants: dict, batch: int, steps: int, rounds: int, dev: torch.device) -> dict[str, list[float]]:
    """Per-round images/s of each variant, interleaved: every round runs each variant ``steps`` times."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, step in variants.items():
            _sync()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _sync()
            rates[name].append(batch * steps / (time.perf_counter() - start))
        _log(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items()))
    return rates


def _best(rates: dict[str, list[float]]) -> tuple[str, float, float]:
    """Our fastest variant by median, its median and the median per-round ratio to torchvision (the
    two-device split is measured for comparison, not as a way to run fast: it is left out)."""
    name = max((k for k in rates if k.startswith("ours_") and k != "ours_tower_split"),
               key=lambda k: statistics.median(rates[k]))
    ratio = statistics.median(a / b for a, b in zip(rates[name], rates["torchvision"]))
    return name.removeprefix("ours_"), statistics.median(rates[name]), ratio


def _model_summary(train, infer, compile_s, config, batch, steps, rounds, dev, width) -> dict:
    train_best, train_rate, train_ratio = _best(train)
    infer_best, infer_rate, infer_ratio = _best(infer)
    medians = {f"{kind}_{name.removeprefix('ours_')}_images_per_s": round(statistics.median(v), 1)
               for kind, rates in (("train", train), ("inference", infer)) for name, v in rates.items()
               if name != "torchvision"}
    return {
        "bench": "model", "train_images_per_s": round(train_rate, 1),
        "torchvision_train_images_per_s": round(statistics.median(train["torchvision"]), 1),
        "train_speedup_vs_torchvision": round(train_ratio, 2),
        "inference_images_per_s": round(infer_rate, 1),
        "torchvision_inference_images_per_s": round(statistics.median(infer["torchvision"]), 1),
        "inference_speedup_vs_torchvision": round(infer_ratio, 2),
        "train_variant": train_best, "inference_variant": infer_best, **medians, "compile_s": compile_s,
        "batch_size": batch, "steps": steps, "rounds": rounds, "threads": torch.get_num_threads(),
        "precision": config.train.precision, "channels_last": True, "compile": sorted(compile_s),
        "lrn_compiled": os.environ.get("ALEXNET_COMPILE", "1") != "0", "width": width,
        "device": _device_label(dev), "torch_version": torch.__version__, "cpu": cpu_name(),
    }


def _device_label(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def model_table(r: dict) -> str:
    return "\n".join([
        f"model alone, images/s (batch {r['batch_size']}, {r['threads']} threads, {r['device']}, median of {r['rounds']}):",
        f"  train      ours ({r['precision']}, {r['train_variant']})  {r['train_images_per_s']:>10.1f}"
        f"   {r['train_speedup_vs_torchvision']:.2f}x torchvision ({r['torchvision_train_images_per_s']:.1f}, fp32 eager)",
        f"  inference  ours ({r['precision']}, {r['inference_variant']})  {r['inference_images_per_s']:>10.1f}"
        f"   {r['inference_speedup_vs_torchvision']:.2f}x torchvision ({r['torchvision_inference_images_per_s']:.1f})",
        f"  compile seconds: {r['compile_s'] or 'none'}",
    ])


# =========================================================================== bench train
#
# `alexnet bench train`: a recipe end to end for ``steps`` training steps (after ``warmup`` untimed
# ones: decode workers starting, LRN compiling per shape), with each step's wall time split into
#   data_wait  blocked on the batch iterator (decode workers behind, or inline decoding),
#   to_device  the rest of the host-to-device copy (and nvJPEG decoding with data.decode=device),
#   augment    the training pipeline on the device (crop, flip, mean, lighting),
#   compute    forward, backward and the optimiser step (train.train_step),
# each synchronised on CUDA, so the split adds up to the step time. The recommended data.workers
# is the compute rate over the decode rate of one worker (measured in this process, one thread).


def bench_train(recipe: str, data_path, overrides: list[str], steps: int = 50, warmup: int = 5,
                ddp_wrap: bool = False, json_out: bool = False, epoch: int = 0) -> dict:
    """Measure (see above) on this process's share of the run; rank 0 prints one JSON line
    (``json_out``) or a short table; returns the dict. ``epoch``: time the steps of that epoch
    (0-based) of the recipe: its input size and frozen layers (phases.py)."""
    from .config import build_config, read_recipe
    from .data.datasets import load_dataset
    from .runtime import init_distributed, main_first, pick_device, seed_everything, set_threads, shutdown_distributed
    from .train import classes_from_data

    config = build_config(read_recipe(recipe), overrides, data_path)
    set_threads(config.train.threads)
    seed_everything(config.seed)
    ddp = init_distributed(config.train.device)
    device = pick_device(config.train.device, ddp.local_rank)
    with main_first(ddp):
        data = load_dataset(config.data, config.seed, ddp)
    config = classes_from_data(config, data)
    run, pipeline = _bench_run(config, data, ddp, device, ddp_wrap, epoch)
    times = _timed_steps(run, pipeline, data, steps, warmup)
    result = _train_summary(config, run, data, times, steps, warmup) | {
        "epoch": epoch, "input_size": pipeline.shrink or pipeline.size, "frozen": list(phases.frozen(config, epoch))}
    if ddp.main:
        print(json.dumps(result) if json_out else train_table(result), flush=True)
    shutdown_distributed()
    return result


def _bench_run(config, data, ddp, device, ddp_wrap: bool, epoch: int = 0):
    """What ``train.train_step`` needs (a run-like namespace) and epoch ``epoch``'s training pipeline
    on ``device``, with that epoch's layers frozen."""
    from types import SimpleNamespace

    from .data.pipeline import pipeline_for
    from .model import AlexNet
    from .resume import Progress
    from .train import make_optimizer, wrap

    model = AlexNet(config.model).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    phases.set_frozen(model, phases.frozen(config, epoch))
    net = _ddp_alone(model, device) if ddp_wrap and ddp.world == 1 else wrap(model, ddp, device)
    run = SimpleNamespace(config=config, device=device, model=model, net=net, ddp=ddp, progress=Progress(),
                          optimizer=make_optimizer(model, config.optim),
                          scaler=torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16"))
    return run, phases.train_pipeline(pipeline_for(config, data).to(device), config, epoch)


def _ddp_alone(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel in a process group of one (NCCL on a GPU, gloo on the CPU): what DDP's
    gradient buckets and all-reduces cost, without a second GPU. Under torchrun its variables are used."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    return DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _epochs(run, data, generator: torch.Generator):
    """Training batches (uint8 on the device) from ``datasets.batches``, epoch after epoch."""
    from .data.datasets import batches

    images, cfg = data.train_images, run.config.data
    if isinstance(images, torch.Tensor):
        images = images.to(run.device)
    while True:
        order = torch.randperm(len(data.train_labels), generator=generator)
        yield from batches(images, data.train_labels, order, cfg.batch_size, run.device, workers=cfg.workers,
                           ddp=run.ddp, decode=cfg.decode)


def _timed_steps(run, pipeline, data, steps: int, warmup: int) -> dict[str, float]:
    """Seconds of the timed steps in each part, and ``wall``: from the first timed step to the last."""
    from .train import train_step

    generator = torch.Generator().manual_seed(run.config.seed)
    batches, sync = _epochs(run, data, generator), _device_sync(run.device)
    times = dict.fromkeys(("data_wait", "to_device", "augment", "compute"), 0.0)
    run.model.train()
    for i in range(warmup + steps):
        if i == warmup:
            times = dict.fromkeys(times, 0.0)
            first = time.perf_counter()
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        t2 = sync()
        x = pipeline.train(x, generator)
        t3 = sync()
        train_step(run, x, y)
        t4 = sync()
        for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key] += seconds
    times["wall"] = time.perf_counter() - first
    batches.close()  # stops the decode workers
    return times


def _device_sync(device: torch.device):
    """A function that waits for ``device``'s queued work and returns perf_counter()."""
    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return sync


def decode_rate(data, decode: str, batch: int, batches: int = 2) -> float | None:
    """Images per CPU second one decode worker delivers (this process, one thread): what a worker of
    ``datasets.batches`` does per batch (decode, or with data.decode=device only read the bytes). None
    for images already in memory (CIFAR-10): nothing to decode."""
    images = data.train_images
    if isinstance(images, torch.Tensor):
        return None
    encoded = decode == "device" and images.reader.format == "jpeg"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator, done, start = torch.Generator().manual_seed(1), 0, time.process_time()
        for _ in range(batches):
            idx = torch.randint(0, len(images), (min(batch, len(images)),), generator=generator)
            done += len(images.encoded(idx) if encoded else images[idx])
        return done / max(time.process_time() - start, 1e-9)
    finally:
        torch.set_num_threads(threads)


def _train_summary(config, run, data, times: dict[str, float], steps: int, warmup: int) -> dict:
    """Rates, the time split and the recommended data.workers."""
    from .runtime import usable_cpus, worker_count

    ddp, cfg = run.ddp, config.data
    share = cfg.batch_size // ddp.world  # this process's images per step
    busy = max(times["wall"] - times["data_wait"], 1e-9)  # what the loop needs besides waiting for data
    consume = share * steps / busy  # images/s this process takes in when never kept waiting
    per_worker = decode_rate(data, cfg.decode, share)
    cores = max(1, usable_cpus() // ddp.local_world)
    needed = math.ceil(1.25 * consume / per_worker) if per_worker else 0  # 25% headroom
    wait_share = times["data_wait"] / max(times["wall"], 1e-9)
    return {
        "bench": "train", "recipe": config.recipe, "images_per_s": round(cfg.batch_size * steps / times["wall"], 1),
        "steps": steps, "warmup_steps": warmup, "batch_size": cfg.batch_size, "processes": ddp.world,
        "seconds": round(times["wall"], 3),
        **{f"{k}_s": round(v, 3) for k, v in times.items() if k != "wall"},
        **{f"{k}_share": round(v / max(times["wall"], 1e-9), 3) for k, v in times.items() if k != "wall"},
        "input_bound": wait_share > 0.1, "compute_images_per_s": round(consume * ddp.world, 1),
        "decode_images_per_s_per_worker": round(per_worker, 1) if per_worker else None,
        "workers": worker_count(cfg.workers if cfg.workers >= 0 else None, ddp.local_world) if per_worker else 0,
        "workers_needed": needed, "recommended_workers": min(needed, cores),
        "decode": cfg.decode, "dataset": cfg.dataset, "precision": config.train.precision,
        "channels_last": config.train.channels_last, "ddp": run.net is not run.model,
        "lrn_compiled": os.environ.get("ALEXNET_COMPILE", "1") != "0", "device": _device_label(run.device),
        "threads": torch.get_num_threads(), "torch_version": torch.__version__, "cpu": cpu_name(),
    }


def train_table(r: dict) -> str:
    parts = ", ".join(f"{k} {r[f'{k}_s']:.2f}s ({100 * r[f'{k}_share']:.0f}%)"
                      for k in ("data_wait", "to_device", "augment", "compute"))
    bound = "INPUT-BOUND: the decode workers cannot keep up" if r["input_bound"] else "compute-bound"
    decode = (f"one decode worker: {r['decode_images_per_s_per_worker']:.0f} img/s; the loop takes "
              f"{r['compute_images_per_s']:.0f} img/s: data.workers={r['recommended_workers']} recommended "
              f"({r['workers_needed']} needed, {r['workers']} used)") if r["decode_images_per_s_per_worker"] \
        else "images in memory: no decode workers"
    return "\n".join([
        f"{r['recipe']}: {r['images_per_s']:.1f} images/s over {r['steps']} steps of {r['batch_size']} on {r['device']} "
        f"({r['processes']} process(es), {r['precision']}, decode {r['decode']})",
        f"  time: {parts}",
        f"  {bound}; {decode}",
    ])
