"""The training loop: one code path for CPU and GPU, with mixed precision, checkpoints and resume.

Data flow: uint8 images (on the device when it is a GPU) -> a batch of indices -> the dataset
kind's training pipeline (``data/pipeline.py``: random crop + flip on uint8, then mean, lighting
and scaling in float on the device) -> model.

The network's fc8 gets as many outputs as the training data has classes unless
``model.num_classes`` says otherwise; a value that disagrees with the data stops the run before
anything is written. Checkpoints carry the class list and the evaluation pipeline.

A run survives being stopped anywhere (see ``resume.py``): checkpoints at each epoch end and
every ``train.checkpoint_every_steps`` carry the position inside the epoch and every random
state, SIGTERM/SIGINT finish the step and checkpoint (``stop.py``), and a non-finite loss stops
the run before it overwrites a good checkpoint (or skips the step, ``train.on_nonfinite``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from . import config as cfgmod
from . import phases
from .data.datasets import batches, load_dataset
from .data.pipeline import Pipeline, pipeline_for
from .errors import UsageError
from .evaluate import evaluate_views
from .model import AlexNet, count_parameters
from .resume import Checkpoints, Progress, gather, rng_state, set_rng_state
from .run import LoadedRun
from .runtime import (Dist, all_sum, autocast, device_name, git_commit, init_distributed, log, main_first,
                      pick_device, seed_everything, set_threads, shutdown_distributed)
from .schedule import Schedule
from .stall import stall_warning
from .stop import StopRequest, agreed, fault_injection, fault_step

CHECK_EVERY = 10  # steps between checks of the loss (a host sync) and, under torchrun, of stop requests
BAR_EVERY = 10  # steps between progress-bar updates (each reads the loss: a host sync)
# An epoch's seeded streams (``_epoch_state``): the order and rank 0's augmentations of epoch e of seed
# s come from seed s * EPOCH_SEED_STRIDE + e; process r > 0 draws its augmentations from that plus
# RANK_SEED_STRIDE * r; a run resumed inside an epoch on another number of processes (whose saved
# generators do not fit) draws new ones from that plus RESUMED_STEP_STRIDE * step. The strides are
# primes, so no two of these seeds meet for realistic seeds, epochs, ranks and steps.
EPOCH_SEED_STRIDE = 100_003
RANK_SEED_STRIDE = 7_919
RESUMED_STEP_STRIDE = 104_729


@dataclass
class Run:
    """What a training run holds while it runs."""

    config: cfgmod.RunConfig
    out: Path
    device: torch.device
    ddp: Dist
    model: torch.nn.Module  # the plain model: what checkpoints store
    net: torch.nn.Module  # what trains: the model, or DDP around it under torchrun
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    progress: Progress
    checkpoints: Checkpoints
    stop: StopRequest
    fault_at: int | None = None  # ALEXNET_FAULT_AT_STEP for this process (stop.py), read once
    pipeline: Pipeline | None = None  # the training and evaluation input pipeline, statistics on the device
    classes: list | None = None  # [{"index", "wnid", "name"}] of the training data, for checkpoints
    resumed: dict | None = None  # inside-epoch state from the checkpoint, for the epoch under way
    writer: object = None  # TensorBoard (rank 0)
    stopped: str | None = None  # the signal that ended the run early (on any process)


def train(config: cfgmod.RunConfig, out: Path, resume: LoadedRun | None = None) -> dict:
    """Run training into the run folder ``out``, or continue the run whose last checkpoint ``resume``
    holds (``run.load_run(out / "checkpoints/last.pt")``); returns the summary."""
    set_threads(config.train.threads)
    seed_everything(config.seed)
    ddp = init_distributed(config.train.device)
    device = pick_device(config.train.device, ddp.local_rank)
    with StopRequest(ddp) as stop:  # from here on SIGTERM/SIGINT end the run with a checkpoint
        with main_first(ddp):  # one process fills the CIFAR-10 cache or prepares an ImageFolder
            data = load_dataset(config.data, config.seed, ddp)
        config = classes_from_data(config, data)
        phases.check(config)
        run = _start(config, out, resume, ddp, device, data, stop)
        train_images = data.train_images  # uint8 tensor (CIFAR-10, moved to the device once) or shards
        if isinstance(train_images, torch.Tensor):
            train_images = train_images.to(device)
        ddp.log(f"training {config.recipe}: {len(data.train_labels)} images, "
            f"{len(data.train_labels) // config.data.batch_size} steps/epoch, {config.optim.epochs} epochs on "
            f"{device_name(device)}")
        while run.progress.epoch < config.optim.epochs and not _stop_agreed(run):
            epoch_metrics = train_epoch(run, train_images, data.train_labels)
            if epoch_metrics is None:  # stopped inside the epoch, checkpoint written
                break
            _end_epoch(run, epoch_metrics, data)
    summary = _summary(run)
    if ddp.main:
        run.writer.close()
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if run.stopped:
            ddp.log(f"stopped by {run.stopped} at step {run.progress.step}; continue with: alexnet train --out {out} --resume")
    shutdown_distributed()
    return summary


def _start(config, out: Path, resume: LoadedRun | None, ddp: Dist, device, data, stop: StopRequest) -> Run:
    """Build the model, optimiser and schedule, and restore them from ``resume`` when continuing."""
    model = (resume.model if resume is not None else AlexNet(config.model)).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = _steps_per_epoch(len(data.train_labels), config.data.batch_size, ddp.world)
    optimizer = make_optimizer(model, config.optim)
    ckpt_dir = _prepare_run_dir(out, config, resume is not None, ddp.main)
    run = Run(config, out, device, ddp, model, wrap(model, ddp, device), optimizer,
              Schedule(config.optim, steps_per_epoch),
              torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16"), Progress(),
              Checkpoints(ckpt_dir, config.train.keep_checkpoints), stop, fault_step(ddp.rank))
    if resume is not None:
        _restore(run, resume, data)
        if ddp.main:
            run.checkpoints.sweep()
            _trim_metrics(out, run.progress.epoch)
    run.pipeline = pipeline_for(config, data).to(device)
    run.classes = data.class_list()
    run.writer = _tensorboard(out) if ddp.main else None
    return run


def classes_from_data(config: cfgmod.RunConfig, data) -> cfgmod.RunConfig:
    """``config`` with fc8's outputs set to the training data's class count; an explicit
    ``model.num_classes`` that disagrees is refused here, before any training or checkpoint."""
    found, given = len(data.classes), config.model.num_classes
    if given and given != found:
        where = config.data.path or config.data.dataset
        raise UsageError(f"model.num_classes={given} but the training data ({where}) has {found} classes; "
                         f"drop model.num_classes (fc8 then follows the data) or set it to {found}")
    return dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=found))


def _steps_per_epoch(images: int, batch: int, world: int) -> int:
    """Full global batches per epoch; each of ``world`` processes takes batch / world images of each."""
    if batch % world:
        raise UsageError(f"data.batch_size={batch} (the global batch) must be divisible by the {world} processes")
    if images < batch:
        raise UsageError(f"data.batch_size={batch} is larger than the {images} training images; "
                         "lower data.batch_size or raise data.limit")
    return images // batch


def wrap(model: torch.nn.Module, ddp: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged over processes), the model itself alone."""
    if ddp.world == 1:
        return model
    if getattr(model, "tower_devices", None):
        raise UsageError("model.tower_devices (the paper's two-device split) runs in one process: every torchrun "
                         "process would put its towers on the same two devices; leave it empty to train with torchrun")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def validate(run: Run, data) -> dict:
    """The per-epoch validation pass: the whole image (CIFAR) or the centre crop (ImageNet), mirrored too if eval_flip
    (``train.eval_crops``: other views)."""
    config, crops = run.config, run.config.train.val_crops
    pipeline = phases.eval_pipeline(run.pipeline, config)
    return evaluate_views([run.model], data.val_images, data.val_labels, batch_size=config.data.eval_batch_size,
                          device=run.device, crops=crops, inputs=lambda x: pipeline.evaluate(x, crops),
                          precision=config.train.precision, ddp=run.ddp)


def make_optimizer(model: torch.nn.Module, cfg: cfgmod.OptimConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights (and on biases too if ``decay_biases``, as the paper)."""
    decay = [p for n, p in model.named_parameters() if cfg.decay_biases or not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if not cfg.decay_biases and n.endswith("bias")]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update (on the paper net 23 ms a step against foreach's 40 ms on a
    # 2-core CPU; the same weights bit for bit over the tested steps); foreach where it is unsupported.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, fused=fused, foreach=None if fused else True)


@dataclass
class Epoch:
    """The epoch under way: its order and augmentation generator, running sums and clock."""

    steps: int  # full global batches in the epoch
    order: torch.Tensor  # the epoch's sample order (the same on every process)
    generator: torch.Generator  # this process's crops, flips and lighting
    sums: torch.Tensor  # EPOCH_SUMS, on the device: adding to them needs no host sync
    end_from: int  # the first of the steps that train_loss_end averages
    first_bad: torch.Tensor  # the first step whose loss was not finite (0: none so far), on the device
    clock: float  # perf_counter when the epoch's time was last added to progress.epoch_seconds
    done_before: int  # steps done before this call (a resumed epoch), for the bar's rate
    pipeline: Pipeline  # this epoch's training pipeline (phases.py: low-resolution windows early on)


def train_epoch(run: Run, images, labels: torch.Tensor) -> dict | None:
    """One pass over a seeded permutation of the training set (or the rest of it, when resumed
    inside the epoch); updates ``run.progress``. Returns the epoch's metrics, or None when a
    stop request ended the epoch early (after writing a checkpoint).

    Every process draws the same order and takes its share of each global batch; rank 0 keeps
    drawing augmentations from the same stream, other ranks from their own.
    """
    epoch = _begin_epoch(run, len(labels))
    bar = _progress_bar(run, epoch.steps)
    for x, y in batches(images, labels, epoch.order, run.config.data.batch_size, run.device,
                        workers=run.config.data.workers, ddp=run.ddp, start=run.progress.epoch_step,
                        decode=run.config.data.decode):
        _step(run, epoch, x, y)
        stopping = _checkpoint_or_stop(run, epoch)
        _show_progress(bar, run, epoch)
        if stopping:
            bar.close()
            return None
    bar.close()
    return _epoch_metrics(run, epoch)


def _begin_epoch(run: Run, n: int) -> Epoch:
    """The epoch's state (fresh, or where a resumed checkpoint left it); the model in training mode."""
    steps = n // run.config.data.batch_size  # drop the ragged last batch: every step sees `batch` images
    order, generator, saved = _epoch_state(run, n)
    run.model.train()
    if phases.set_frozen(run.model, phases.frozen(run.config, run.progress.epoch)) and run.ddp.world > 1:
        run.net = wrap(run.model, run.ddp, run.device)  # DDP reduces the gradients of the learning layers only
    device = run.device
    return Epoch(steps, order, generator, torch.tensor(saved, dtype=torch.float32, device=device),
                 steps - _end_steps(steps), torch.zeros((), dtype=torch.int64, device=device),
                 time.perf_counter(), run.progress.epoch_step,
                 phases.train_pipeline(run.pipeline, run.config, run.progress.epoch))


def _step(run: Run, epoch: Epoch, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step on a uint8 batch: augment, set the learning rate, train, add to the sums."""
    p = run.progress
    x = epoch.pipeline.train(x, epoch.generator)
    for group in run.optimizer.param_groups:
        group["lr"] = run.schedule.lr(p.step)
    loss, logits, taken = train_step(run, x, y)
    if taken:
        epoch.sums += _step_sums(loss.detach(), logits.detach(), y, p.epoch_step >= epoch.end_from,
                                 run.config.optim.label_smoothing)
    p.step += 1
    p.epoch_step += 1
    epoch.first_bad = torch.where((epoch.first_bad == 0) & ~torch.isfinite(loss.detach()), p.step, epoch.first_bad)


def _checkpoint_or_stop(run: Run, epoch: Epoch) -> bool:
    """After a step: check the loss and stop requests every CHECK_EVERY steps, write a checkpoint every
    ``train.checkpoint_every_steps`` steps or when stopping; returns whether the run stops here."""
    p, every = run.progress, run.config.train.checkpoint_every_steps
    due = every > 0 and p.step % every == 0 and p.epoch_step < epoch.steps  # the last step saves at epoch end
    check = p.epoch_step % CHECK_EVERY == 0 or p.epoch_step == epoch.steps or (run.ddp.world == 1 and run.stop.signal)
    stopping = _guard(run, epoch.first_bad) if due or check else False
    if due or stopping:
        _clock_epoch(run, epoch)
        _save(run, best=False, order=epoch.order, generator=epoch.generator, sums=epoch.sums.tolist())
    if p.epoch_step < epoch.steps:  # the epoch's last step: after its checkpoint, in _end_epoch
        fault_injection(p.step, run.fault_at)
    return stopping


def _clock_epoch(run: Run, epoch: Epoch) -> float:
    """Add the time since the epoch's clock was last read to ``progress.epoch_seconds``; return that total."""
    now = time.perf_counter()
    run.progress.epoch_seconds += now - epoch.clock
    epoch.clock = now
    return run.progress.epoch_seconds


def _progress_bar(run: Run, steps: int) -> tqdm:
    p, config = run.progress, run.config
    return tqdm(total=steps, initial=p.epoch_step, desc=f"epoch {p.epoch + 1}/{config.optim.epochs}", file=sys.stderr,
                disable=not (config.train.progress and run.ddp.main), unit="step", leave=False, dynamic_ncols=True)


def _show_progress(bar: tqdm, run: Run, epoch: Epoch) -> None:
    """Every BAR_EVERY steps and at the epoch's end: the loss so far, images/s and the run's ETA."""
    p, config = run.progress, run.config
    if bar.disable or not (p.epoch_step % BAR_EVERY == 0 or p.epoch_step == epoch.steps):
        return
    batch = config.data.batch_size
    seconds = p.epoch_seconds + time.perf_counter() - epoch.clock
    rate = (p.epoch_step - epoch.done_before) * batch / max(seconds, 1e-9)
    remaining = (config.optim.epochs - p.epoch) * epoch.steps - p.epoch_step
    loss = epoch.sums[0].item() / max(p.epoch_step, 1)
    bar.set_postfix_str(f"loss {loss:.3f}  {rate:.0f} img/s  run ETA {_clock(remaining * batch / max(rate, 1e-9))}")
    bar.update(p.epoch_step - bar.n)


def _epoch_metrics(run: Run, epoch: Epoch) -> dict:
    """The finished epoch's metrics (summed over processes); its time moves to ``train_seconds``."""
    p, batch, steps, world = run.progress, run.config.data.batch_size, epoch.steps, run.ddp.world
    seconds = _clock_epoch(run, epoch)
    p.epoch_seconds = 0.0
    p.train_seconds += seconds
    p.images_seen += steps * batch
    per_process = torch.tensor([world, 1, 1, world], device=run.device)  # loss sums are means over each process's share
    loss, correct, mode, end_loss = all_sum((epoch.sums / per_process).tolist(), run.device)
    return {"train_loss": loss / steps, "train_loss_end": end_loss / _end_steps(steps),
            "train_top1_err": 1 - correct / (steps * batch), "images_per_s": steps * batch / max(seconds, 1e-9),
            "train_mode_share": mode / (steps * batch)}


# A training epoch's running sums: the loss, the correct predictions, the images predicted as their
# batch's most frequent class (all of them: the net predicts one class, see stall.py), and the
# loss of the epoch's last tenth of steps (where the epoch ends, beside its mean). The loss is the
# cross-entropy with the labels: with optim.label_smoothing the objective also holds the smoothing
# term, which is never below smoothing * ln(classes) and so would lift every reported loss; without
# it train_loss compares with val_loss and with ln(classes), the loss of a constant prediction.
EPOCH_SUMS = ("loss", "correct", "mode", "end_loss")


def _end_steps(steps: int) -> int:
    """How many of an epoch's last steps ``train_loss_end`` averages: a tenth, at least 10."""
    return min(steps, max(10, steps // 10))


def _step_sums(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, at_end: bool,
               smoothing: float = 0.0) -> torch.Tensor:
    """One step's contribution to EPOCH_SUMS (on the device); ``loss`` is the step's objective,
    replaced by the cross-entropy with the labels when they were smoothed."""
    if smoothing:
        loss = F.cross_entropy(logits.float(), y)
    predicted = logits.argmax(1)
    mode = torch.bincount(predicted, minlength=logits.shape[1]).max()
    return torch.stack([loss, (predicted == y).sum().float(), mode.float(), loss * float(at_end)])


def _epoch_state(run: Run, n: int) -> tuple[torch.Tensor, torch.Generator, list[float]]:
    """The epoch's sample order, its augmentation generator and its running sums: from the
    checkpoint when resuming inside the epoch, else fresh from the seed and the epoch number
    (the strides above keep epochs, processes and resumed steps apart)."""
    config, p, rank = run.config, run.progress, run.ddp.rank
    generator = torch.Generator()
    seed = config.seed * EPOCH_SEED_STRIDE + p.epoch
    resumed, run.resumed = run.resumed, None
    if resumed is not None and p.epoch_step > 0:
        if resumed["generator"] is not None:
            generator.set_state(resumed["generator"])
        else:  # the number of processes changed: the data order is kept, augmentations are new
            generator.manual_seed(seed + RANK_SEED_STRIDE * rank + RESUMED_STEP_STRIDE * p.step)
        sums = list(resumed["sums"]) + [0.0] * (len(EPOCH_SUMS) - len(resumed["sums"]))  # older checkpoints: fewer
        return resumed["order"].long(), generator, sums
    generator.manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    if rank:
        generator.manual_seed(seed + RANK_SEED_STRIDE * rank)
    return order, generator, [0.0] * len(EPOCH_SUMS)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Forward, backward and the optimiser step; returns the loss, the logits and whether the step
    was taken (``train.on_nonfinite = "skip"`` skips a step whose loss is not finite)."""
    config, device = run.config, run.device
    with autocast(device, config.train.precision):
        logits = run.net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.optim.label_smoothing)
    if config.train.on_nonfinite == "skip" and not _all_finite(loss, device):
        run.progress.skipped_steps += 1
        run.ddp.log(f"step {run.progress.step + 1}: loss is {loss.item()}, step skipped (train.on_nonfinite=skip)")
        return loss, logits, False
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss, logits, True


def _all_finite(loss: torch.Tensor, device: torch.device) -> bool:
    """Whether the loss is finite on every process (all must skip together, or DDP would hang)."""
    bad = 0.0 if torch.isfinite(loss.detach()) else 1.0
    return all_sum([bad], device)[0] == 0  # all_sum is the value itself in a lone process


def _guard(run: Run, first_bad: torch.Tensor) -> bool:
    """Stop with a message naming the step if any loss so far was not finite (before anything is
    saved, so the last good checkpoint stays); returns whether the processes agreed to stop."""
    stop, bad = agreed(run.stop.signal is not None, int(first_bad.item()), run.ddp.world, run.device)
    if stop:
        run.stopped = run.stop.signal or "a signal to another process"
    if bad and run.config.train.on_nonfinite == "stop":
        last = run.checkpoints.last
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written"
        raise UsageError(f"the training loss became nan or inf at step {bad} (epoch {run.progress.epoch + 1}); "
                         f"the run stopped and {kept}. Lower optim.lr, try train.precision=fp32, or set "
                         "train.on_nonfinite=skip to skip such steps")
    return stop


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(0, seconds)))


def _epoch_row(progress: Progress, epoch_metrics: dict, schedule: Schedule, evaluated: bool) -> dict:
    """One metrics.jsonl line; the validation errors are null in epochs without a validation pass."""
    row = {"epoch": progress.epoch, **epoch_metrics}
    row["val_top1_err"] = progress.last_eval["val_top1_err"] if evaluated else None
    row["val_top5_err"] = progress.last_eval["val_top5_err"] if evaluated else None
    row["lr"] = schedule.lr(max(0, progress.step - 1))
    row["elapsed_s"] = round(progress.train_seconds, 2)
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


def _end_epoch(run: Run, epoch_metrics: dict, data) -> None:
    """Validate when due, step the plateau schedule, log the epoch, write the epoch-end checkpoint."""
    config, p = run.config, run.progress
    p.epoch += 1
    p.epoch_step = 0
    evaluated = p.epoch == config.optim.epochs or p.epoch % config.train.eval_every == 0
    if evaluated:
        started = time.perf_counter()
        p.last_eval = validate(run, data)
        p.train_seconds += time.perf_counter() - started
        if run.schedule.end_epoch(p.last_eval["val_top1_err"]):
            run.ddp.log(f"validation error stopped improving: learning rate / 10 (drop {run.schedule.drops})")
    best = evaluated and p.last_eval["val_top1_err"] <= p.best_val_top1_err  # ties count: the newer net
    if evaluated:
        p.best_val_top1_err = min(p.best_val_top1_err, p.last_eval["val_top1_err"])
    row = _epoch_row(p, epoch_metrics, run.schedule, evaluated)
    if run.ddp.main:  # one writer: rank 0 logs and checkpoints
        _append_metrics(run.out, row, run.writer)
        warning = stall_warning(p.epoch, row["train_loss"], config.model.num_classes, row["train_mode_share"],
                                p.last_eval["top_class_share"] if evaluated else None, config,
                                run.model.fc8.in_features)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    _save(run, best=best)
    fault_injection(p.step, run.fault_at)


def _stop_agreed(run: Run) -> bool:
    """Between epochs: whether a stop request reached any process (the last checkpoint is current)."""
    stop, _ = agreed(run.stop.signal is not None, 0, run.ddp.world, run.device)
    if stop:
        run.stopped = run.stop.signal or "a signal to another process"
    return stop


def _save(run: Run, best: bool, order: torch.Tensor | None = None, generator: torch.Generator | None = None,
          sums: list[float] | None = None) -> None:
    """A checkpoint of the run now: at an epoch end, or inside one with its order, generator and sums.
    Every process calls it (their random states are gathered); rank 0 writes."""
    ranks = gather({"rng": rng_state(generator), "sums": list(sums or [0.0] * len(EPOCH_SUMS))}, run.ddp.world)
    error = None
    if run.ddp.main:
        state = {"optimizer": run.optimizer.state_dict(), "schedule": run.schedule.state_dict(),
                 "scaler": run.scaler.state_dict(), "progress": vars(run.progress), "ranks": ranks,
                 "data": {"order": order.to(torch.int32) if order is not None else None},
                 "classes": run.classes, "pipeline": phases.eval_pipeline(run.pipeline, run.config).state_dict()}
        try:
            run.checkpoints.save(run.model, cfgmod.to_dict(run.config), state, run.progress.step, best)
        except UsageError as err:
            error = err
    failed = all_sum([1.0 if error else 0.0], run.device)[0]  # every process learns of rank 0's failure
    if error:
        raise error
    if failed:
        raise UsageError("rank 0 could not write a checkpoint (see its message); stopping every process")


def _restore(run: Run, resume: LoadedRun, data) -> None:
    """Continue from ``resume`` (its weights are already the model's): optimiser, schedule, scaler,
    progress and this process's random states; refused when ``data`` holds other classes than the
    run learned (another --data)."""
    ckpt, path = resume.checkpoint, resume.path
    resume.check_classes(data)
    stored = ckpt.get("config", {}).get("model", {}).get("tower_devices", "")
    if bool(stored) != bool(run.config.model.tower_devices):  # the split net's optimiser state is per half
        raise UsageError(f"{path} was trained with model.tower_devices={stored!r}; continue it with a "
                         f"{'non-empty' if stored else 'empty'} model.tower_devices (the optimiser state is per tower "
                         "half when split), or start a new run from its weights")
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["schedule"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.progress = Progress(**ckpt["progress"])
    ranks = ckpt.get("ranks") or []
    mine = ranks[run.ddp.rank] if len(ranks) == run.ddp.world else None
    if mine is not None:
        set_rng_state(mine["rng"])
    elif ranks:
        run.ddp.log(f"{path} was written by {len(ranks)} processes, this run has {run.ddp.world}: the data "
                    "order and weights continue, random augmentations and dropout do not repeat the original run exactly")
    order = (ckpt.get("data") or {}).get("order")
    if run.progress.epoch_step and order is not None:
        run.resumed = {"order": order, "generator": mine["rng"]["epoch_generator"] if mine else None,
                       "sums": list(mine["sums"]) if mine else [0.0] * len(EPOCH_SUMS)}
    where = f"inside epoch {run.progress.epoch + 1} at step {run.progress.step}" if run.progress.epoch_step \
        else f"after epoch {run.progress.epoch}"
    run.ddp.log(f"resuming from {path} {where}")


def _trim_metrics(out: Path, epochs: int) -> None:
    """Drop metrics rows of epochs after the checkpoint (a kill between a row and its checkpoint)."""
    path = out / "metrics.jsonl"
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if _row_epoch(line) <= epochs]
        if len(kept) != len(rows):
            path.write_text("".join(line + "\n" for line in kept))


def _row_epoch(line: str) -> float:
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return math.inf


def _append_metrics(out: Path, row: dict, writer) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in row.items():
        if key != "epoch" and value is not None:
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
    errs = f"val top-1 {row['val_top1_err']:.4f}  top-5 {row['val_top5_err']:.4f}" if row["val_top1_err"] is not None else ""
    log(f"epoch {row['epoch']}: loss {row['train_loss']:.4f} (last tenth {row['train_loss_end']:.4f})  train err {row['train_top1_err']:.4f}  {errs}  "
        f"{row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f}s")


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out))


def _summary(run: Run) -> dict:
    progress, config, device, world = run.progress, run.config, run.device, run.ddp.world
    return {
        "val_top1_err": progress.last_eval.get("val_top1_err"),
        "val_top5_err": progress.last_eval.get("val_top5_err"),
        "best_val_top1_err": progress.best_val_top1_err if math.isfinite(progress.best_val_top1_err) else None,
        "examples": progress.last_eval.get("examples"),
        "epochs": progress.epoch,
        "train_seconds": round(progress.train_seconds, 2),
        "images_per_s": round(progress.images_seen / max(progress.train_seconds, 1e-9), 1),
        "device": device_name(device) + (f" x {world} processes" if world > 1 else ""),
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "recipe": config.recipe,
        "classes": config.model.num_classes,
        "parameters": count_parameters(run.model),
        "step": progress.step,
        "skipped_steps": progress.skipped_steps,
        "stopped": run.stopped,  # SIGTERM / SIGINT when a signal ended the run early, else null
    }
