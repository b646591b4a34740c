"""The training loop: one code path for CPU and GPU, with mixed precision, checkpoints and resume.

Data flow: uint8 images (on the device when it is a GPU) -> a batch of indices -> random
crop + flip on uint8 -> normalise to float on the device -> model.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from . import config as cfgmod
from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .data.augment import (crop_at, flip_lr, flip_where, normalize, pca_lighting, random_crop, random_crop_offsets,
                           random_flips, subtract_mean_image)
from .data.datasets import batches, load_dataset
from .errors import UsageError
from .evaluate import eval_inputs, evaluate_views
from .model import AlexNet
from .runtime import (Dist, all_sum, autocast, device_name, git_commit, init_distributed, log, pick_device,
                      seed_everything, set_threads, shutdown_distributed)
from .schedule import Schedule


@dataclass
class Progress:
    """What a checkpoint must carry to continue a run."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    train_seconds: float = 0.0
    images_seen: int = 0
    best_val_top1_err: float = math.inf
    last_eval: dict = field(default_factory=dict)


def train(config: cfgmod.RunConfig, out: Path, resume: bool = False) -> dict:
    """Run (or continue) training into the run folder ``out``; returns the summary."""
    set_threads(config.train.threads)
    seed_everything(config.seed)
    ddp = init_distributed(config.train.device)
    device = pick_device(config.train.device, ddp.local_rank)
    data = load_dataset(config.data, config.seed)
    model = AlexNet(config.model).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = _steps_per_epoch(len(data.train_labels), config.data.batch_size, ddp.world)
    optimizer = make_optimizer(model, config.optim)
    schedule = Schedule(config.optim, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")
    progress = Progress()
    ckpt_dir = _prepare_run_dir(out, config, resume, ddp.main)
    if resume:
        progress = _restore(ckpt_dir / "last.pt", model, optimizer, schedule, scaler)
    train_images = data.train_images  # uint8 tensor (CIFAR-10, moved to the device once) or shards
    if isinstance(train_images, torch.Tensor):
        train_images = train_images.to(device)
    stats = _augment_stats(data, config, device)
    net = _wrap(model, ddp, device)
    writer = _tensorboard(out) if ddp.main else None
    log(f"training {config.recipe}: {len(data.train_labels)} images, {steps_per_epoch} steps/epoch, "
        f"{config.optim.epochs} epochs on {device_name(device)}")
    while progress.epoch < config.optim.epochs:
        epoch_metrics = train_epoch(net, optimizer, schedule, scaler, train_images, data.train_labels,
                                    config, device, progress, stats, ddp)
        progress.epoch += 1
        evaluated = progress.epoch == config.optim.epochs or progress.epoch % config.train.eval_every == 0
        if evaluated:
            started = time.perf_counter()
            progress.last_eval = validate(model, data, config, device)
            progress.train_seconds += time.perf_counter() - started
            if schedule.end_epoch(progress.last_eval["val_top1_err"]):
                log(f"validation error stopped improving: learning rate / 10 (drop {schedule.drops})")
        row = _epoch_row(progress, epoch_metrics, schedule, evaluated)
        if ddp.main:  # one writer: rank 0 logs and checkpoints
            _append_metrics(out, row, writer)
            _save_epoch(ckpt_dir, model, config, optimizer, schedule, scaler, progress, evaluated)
    summary = _summary(progress, config, device, ddp.world)
    if ddp.main:
        writer.close()
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutdown_distributed()
    return summary


def _augment_stats(data, config: cfgmod.RunConfig, device: torch.device) -> dict | None:
    """The training set's mean image and lighting components on the device, once for the whole run.

    Deviation: the paper scales p_i by its eigenvalue lambda_i; on the 0..255 scale that is a shift
    of hundreds of levels, so PCA lighting uses sqrt(lambda_i), the pixel standard deviation along
    p_i (as fb.resnet.torch and most reproductions do): a shift of a few levels for sigma 0.1.
    CIFAR-10 (no prepared statistics) gets lighting only when ``data.pca_std`` > 0, from the RGB
    covariance of its training pixels, with p_i divided by the per-channel std of its normalisation.
    """
    if data.stats is None:
        if not config.data.pca_std:
            return None
        eigval, eigvec = rgb_eigen(data.train_images)
        scale = torch.tensor(config.data.std, dtype=torch.float32) * 255
        return {"pc_std": eigval.clamp_min(0).sqrt().to(device), "eigvec": (eigvec / scale[:, None]).to(device)}
    stats = data.stats
    return {"mean_image": stats["mean_image"].to(device), "eigvec": stats["eigvec"].to(device),
            "pc_std": stats["eigval"].clamp_min(0).sqrt().to(device)}


def rgb_eigen(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the RGB covariance of uint8 (N, 3, H, W) images."""
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    eigval, eigvec = torch.linalg.eigh(torch.cov(pixels))
    return eigval.float(), eigvec.float()


def _steps_per_epoch(images: int, batch: int, world: int) -> int:
    """Full global batches per epoch; each of ``world`` processes takes batch / world images of each."""
    if batch % world:
        raise UsageError(f"data.batch_size={batch} (the global batch) must be divisible by the {world} processes")
    if images < batch:
        raise UsageError(f"data.batch_size={batch} is larger than the {images} training images; "
                         "lower data.batch_size or raise data.limit")
    return images // batch


def _wrap(model: torch.nn.Module, ddp: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged over processes), the model itself alone."""
    if ddp.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def validate(model, data, config: cfgmod.RunConfig, device: torch.device) -> dict:
    """The per-epoch validation pass: the whole image (CIFAR) or the centre crop (ImageNet), mirrored too if eval_flip."""
    crops = 2 if config.train.eval_flip else 1
    images, size, prepare = eval_inputs(data, config, crops)
    return evaluate_views([model], images, data.val_labels, batch_size=config.data.eval_batch_size,
                          device=device, crops=crops, size=size, prepare=prepare, precision=config.train.precision)


def make_optimizer(model: torch.nn.Module, cfg: cfgmod.OptimConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights (and on biases too if ``decay_biases``, as the paper)."""
    decay = [p for n, p in model.named_parameters() if cfg.decay_biases or not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if not cfg.decay_biases and n.endswith("bias")]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, foreach=True)


def augment_batch(images: torch.Tensor, config: cfgmod.RunConfig, generator: torch.Generator,
                  stats: dict | None = None) -> torch.Tensor:
    """The training pipeline: uint8 crop and flip, then float work on the device.

    CIFAR-10: padded random crop, flip, per-channel normalisation (and PCA lighting if
    ``data.pca_std`` > 0; the cifar10 recipe leaves it off). Prepared ImageNet (``stats``):
    the paper's section 4.1, random 224 crops of the 256x256 images and their mirrors, minus the
    same window of the mean image, plus PCA lighting.
    """
    size = config.model.input_size
    if stats is None or "mean_image" not in stats:
        x = random_crop(images, size, config.data.crop_padding, generator)
        if config.data.flip:
            x = flip_lr(x, generator)
        x = normalize(x, config.data.mean, config.data.std, config.train.channels_last)
        if stats is not None:  # CIFAR-10 with data.pca_std > 0, see _augment_stats
            x = pca_lighting(x, stats["pc_std"], stats["eigvec"], generator, sigma=config.data.pca_std)
        return x
    n, _, h, w = images.shape
    dy, dx = random_crop_offsets(n, h, w, size, generator)
    flip = random_flips(n, generator, p=0.5 if config.data.flip else 0.0).to(images.device)
    x = flip_where(crop_at(images, dy, dx, size), flip)
    mean = flip_where(crop_at(stats["mean_image"], dy, dx, size), flip)  # the same window, mirrored alike
    x = subtract_mean_image(x, mean, config.train.channels_last)
    if config.data.pca_std:  # stats from _augment_stats: pc_std = sqrt(eigenvalue), see there
        x = pca_lighting(x, stats["pc_std"], stats["eigvec"], generator, sigma=config.data.pca_std)
    return x


def train_epoch(model, optimizer, schedule, scaler, images, labels, config, device, progress: Progress,
                stats: dict | None = None, ddp: Dist = Dist()) -> dict:
    """One pass over a seeded permutation of the training set; updates ``progress`` in place.

    Every process draws the same order and takes its share of each global batch; rank 0 keeps
    drawing augmentations from the same stream, other ranks from their own.
    """
    model.train()
    generator = torch.Generator().manual_seed(config.seed * 100_003 + progress.epoch)
    batch = config.data.batch_size
    order = torch.randperm(len(labels), generator=generator)
    if ddp.rank:
        generator.manual_seed(config.seed * 100_003 + progress.epoch + 7_919 * ddp.rank)
    steps = len(labels) // batch  # drop the ragged last batch: every step sees `batch` images
    # Sums stay on the device: no host synchronisation inside the loop.
    loss_sum, correct, started = torch.zeros((), device=device), torch.zeros((), device=device), time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {progress.epoch + 1}/{config.optim.epochs}", file=sys.stderr,
               disable=not (config.train.progress and ddp.main), unit="step", leave=False, dynamic_ncols=True)
    for i, (x, y) in enumerate(batches(images, labels, order, batch, device, workers=config.data.workers,
                                         rank=ddp.rank, world=ddp.world, decode=config.data.decode)):
        x = augment_batch(x, config, generator, stats)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(progress.step)
        loss, logits = train_step(model, optimizer, scaler, x, y, config, device)
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(1) == y).sum()
        progress.step += 1
        if not bar.disable and (i % 10 == 9 or i == steps - 1):
            _update_bar(bar, i + 1, loss_sum, batch, started, progress, config, steps)
    bar.close()
    seconds = time.perf_counter() - started
    progress.train_seconds += seconds
    progress.images_seen += steps * batch
    loss_total, correct_total = all_sum([loss_sum.item() / ddp.world, correct.item()], device)
    return {"train_loss": loss_total / steps, "train_top1_err": 1 - correct_total / (steps * batch),
            "images_per_s": steps * batch / seconds}


def train_step(model, optimizer, scaler, x, y, config, device):
    with autocast(device, config.train.precision):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.optim.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


def _update_bar(bar, done, loss_sum, batch, started, progress, config, steps):
    rate = done * batch / (time.perf_counter() - started)
    remaining = (config.optim.epochs - progress.epoch) * steps - done
    bar.set_postfix_str(f"loss {loss_sum.item() / done:.3f}  {rate:.0f} img/s  run ETA {_clock(remaining * batch / rate)}")
    bar.update(done - bar.n)


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(0, seconds)))


def _epoch_row(progress: Progress, epoch_metrics: dict, schedule: Schedule, evaluated: bool) -> dict:
    """One metrics.jsonl line; the validation errors are null in epochs without a validation pass."""
    row = {"epoch": progress.epoch, **epoch_metrics}
    row["val_top1_err"] = progress.last_eval["val_top1_err"] if evaluated else None
    row["val_top5_err"] = progress.last_eval["val_top5_err"] if evaluated else None
    row["lr"] = schedule.lr(max(0, progress.step - 1))
    row["elapsed_s"] = round(progress.train_seconds, 2)
    if row["val_top1_err"] is not None:
        progress.best_val_top1_err = min(progress.best_val_top1_err, row["val_top1_err"])
    return row


def _prepare_run_dir(out: Path, config: cfgmod.RunConfig, resume: bool, main: bool = True) -> Path:
    ckpt_dir = out / "checkpoints"
    if resume and not (ckpt_dir / "last.pt").is_file():
        raise UsageError(f"--resume: no checkpoint at {ckpt_dir / 'last.pt'}; start without --resume")
    if not resume and (ckpt_dir / "last.pt").exists():
        raise UsageError(f"run folder {out} already holds a run; pass --resume to continue it or choose another --out")
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(cfgmod.to_toml(config))
    return ckpt_dir


def _restore(path: Path, model, optimizer, schedule, scaler) -> Progress:
    ckpt = load_checkpoint(path)
    load_weights(model, ckpt, path)
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    progress = Progress(**ckpt["progress"])
    log(f"resuming from {path} after epoch {progress.epoch}")
    return progress


def _save_epoch(ckpt_dir, model, config, optimizer, schedule, scaler, progress: Progress, evaluated: bool) -> None:
    """last.pt every epoch; best.pt when this epoch's validation error is the best so far."""
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
             "progress": vars(progress), "rng": rng}
    save_checkpoint(ckpt_dir / "last.pt", model, cfgmod.to_dict(config), **state)
    if evaluated and progress.last_eval["val_top1_err"] <= progress.best_val_top1_err:
        save_checkpoint(ckpt_dir / "best.pt", model, cfgmod.to_dict(config), progress=vars(progress))


def _append_metrics(out: Path, row: dict, writer) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in row.items():
        if key != "epoch" and value is not None:
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
    errs = f"val top-1 {row['val_top1_err']:.4f}  top-5 {row['val_top5_err']:.4f}" if row["val_top1_err"] is not None else ""
    log(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  train err {row['train_top1_err']:.4f}  {errs}  "
        f"{row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f}s")


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out))


def _summary(progress: Progress, config: cfgmod.RunConfig, device: torch.device, world: int) -> dict:
    return {
        "val_top1_err": progress.last_eval.get("val_top1_err"),
        "val_top5_err": progress.last_eval.get("val_top5_err"),
        "best_val_top1_err": progress.best_val_top1_err,
        "examples": progress.last_eval.get("examples"),
        "epochs": progress.epoch,
        "train_seconds": round(progress.train_seconds, 2),
        "images_per_s": round(progress.images_seen / max(progress.train_seconds, 1e-9), 1),
        "device": device_name(device) + (f" x {world} processes" if world > 1 else ""),
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "recipe": config.recipe,
    }
