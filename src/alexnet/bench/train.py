"""``alexnet bench train``: a recipe end to end, and where each training step's time goes.

A recipe runs for ``steps`` training steps (after ``warmup`` untimed ones: decode workers starting,
LRN compiling per shape), with each step's wall time split into
  data_wait  blocked on the batch iterator (decode workers behind, or inline decoding),
  to_device  the rest of the host-to-device copy (and nvJPEG decoding with data.decode=device),
  augment    the training pipeline on the device (crop, flip, mean, lighting),
  compute    forward, backward and the optimiser step (the training loop's ``TrainStep``),
each synchronised on CUDA, so the split adds up to the step time. The recommended data.workers
is the compute rate over the decode rate of one worker (measured in this process, one thread).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import torch

from ..config import build_config, read_recipe
from ..data.datasets import batches, load_dataset
from ..data.pipeline import Pipeline, pipeline_for
from ..errors import UsageError
from ..nn.lrn import compile_available
from ..nn.model import AlexNet
from ..runtime import Dist, shutdown_distributed, start, usable_cpus, worker_count
from ..train import curriculum
from ..train.loop import classes_from_data
from ..train.step import TrainStep, wrap
from .common import cpu_name, device_label


@dataclass
class Bench:
    """What the timed steps use: the run's config, the model, its step and the epoch's pipeline."""

    config: object
    ddp: Dist
    device: torch.device
    model: torch.nn.Module
    step: TrainStep
    pipeline: Pipeline


def bench_train(recipe: str, data_path, overrides: list[str], steps: int = 50, warmup: int = 5,
                ddp_wrap: bool = False, json_out: bool = False, epoch: int = 0) -> dict:
    """Measure (see the module docstring) on this process's share of the run; rank 0 prints one JSON
    line (``json_out``) or a short table; returns the dict. ``epoch``: time the steps of that epoch
    (0-based) of the recipe: its input size and frozen layers (``Pipeline.for_epoch``, ``curriculum``)."""
    config = build_config(read_recipe(recipe), overrides, data_path)
    if epoch >= config.optim.epochs:
        raise UsageError(f"--epoch {epoch}: the recipe trains epochs 0..{config.optim.epochs - 1} (0-based); give one "
                         "of them, or more epochs with optim.epochs=N")
    ddp, device = start(config.seed, config.train.threads, config.train.device)
    data = load_dataset(config.data, config.seed, ddp)
    config = classes_from_data(config, data)
    bench = _bench(config, data, ddp, device, ddp_wrap, epoch)
    times = _timed_steps(bench, data, steps, warmup)
    result = _train_summary(bench, data, times, steps, warmup) | {
        "epoch": epoch, "input_size": bench.pipeline.shrink or bench.pipeline.size,
        "frozen": list(curriculum.frozen(config, epoch))}
    if ddp.main:
        print(json.dumps(result) if json_out else train_table(result), flush=True)
    shutdown_distributed()
    return result


def _bench(config, data, ddp, device, ddp_wrap: bool, epoch: int = 0) -> Bench:
    """The model as a run builds it, with epoch ``epoch``'s layers frozen, its ``TrainStep`` (DDP in a
    group of one with ``ddp_wrap``) and that epoch's training pipeline on ``device``."""
    model = AlexNet(config.model).set_lrn_compiled(config.train.compile_lrn).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    curriculum.set_frozen(model, curriculum.frozen(config, epoch))
    net = _ddp_alone(model, device) if ddp_wrap and ddp.world == 1 else wrap(model, ddp, device)
    pipeline = pipeline_for(config, data).to(device).for_epoch(config.data, epoch)
    return Bench(config, ddp, device, model, TrainStep.build(model, net, config), pipeline)


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


def _epochs(bench: Bench, data, generator: torch.Generator):
    """Training batches (uint8 on the device) from ``datasets.batches``, epoch after epoch."""
    images, cfg = data.train_images, bench.config.data
    if isinstance(images, torch.Tensor):
        images = images.to(bench.device)
    while True:
        order = torch.randperm(len(data.train_labels), generator=generator)
        yield from batches(images, data.train_labels, order, cfg.batch_size, bench.device, workers=cfg.workers,
                           ddp=bench.ddp, decode=cfg.decode)


def _timed_steps(bench: Bench, data, steps: int, warmup: int) -> dict[str, float]:
    """Seconds of the timed steps in each part, and ``wall``: from the first timed step to the last."""
    generator = torch.Generator().manual_seed(bench.config.seed)
    epochs, sync = _epochs(bench, data, generator), _device_sync(bench.device)
    times = dict.fromkeys(("data_wait", "to_device", "augment", "compute"), 0.0)
    bench.model.train()
    for i in range(warmup + steps):
        if i == warmup:
            times = dict.fromkeys(times, 0.0)
            first = time.perf_counter()
        t0 = time.perf_counter()
        x, y = next(epochs)
        t1 = time.perf_counter()
        t2 = sync()
        x = bench.pipeline.train(x, generator)
        t3 = sync()
        bench.step(x, y)
        t4 = sync()
        for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key] += seconds
    times["wall"] = time.perf_counter() - first
    epochs.close()  # stops the decode workers
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


def _train_summary(bench: Bench, data, times: dict[str, float], steps: int, warmup: int) -> dict:
    """Rates, the time split and the recommended data.workers."""
    config = bench.config
    ddp, cfg = bench.ddp, config.data
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
        "channels_last": config.train.channels_last, "ddp": bench.step.net is not bench.model,
        "lrn_compiled": config.train.compile_lrn and compile_available(), "device": device_label(bench.device),
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
        f"{r['recipe']}: {r['images_per_s']:.1f} images/s over {r['steps']} steps of {r['batch_size']} "
        f"on {r['device']} "
        f"({r['processes']} process(es), {r['precision']}, decode {r['decode']})",
        f"  time: {parts}",
        f"  {bound}; {decode}",
    ])
