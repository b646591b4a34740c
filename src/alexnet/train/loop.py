"""The training loop: one code path for CPU and GPU, with mixed precision, checkpoints and resume.

Data flow: uint8 images (on the device when it is a GPU) -> a batch of indices -> the epoch's
training pipeline (``data/pipeline.py``: random crop + flip on uint8, then mean, lighting and
scaling in float on the device) -> ``TrainStep`` (``step.py``).

The network's fc8 gets as many outputs as the training data has classes unless
``model.num_classes`` says otherwise; a value that disagrees with the data stops the run before
anything is written. Checkpoints carry the class list and the evaluation pipeline.

A run survives being stopped anywhere (``state.py``): checkpoints at each epoch end and every
``train.checkpoint_every_steps`` carry the position inside the epoch and every random state,
SIGTERM/SIGINT finish the step and checkpoint (``stop.py``), and a non-finite loss stops the run
before it overwrites a good checkpoint (or skips the step, ``train.on_nonfinite``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from .. import config as cfgmod
from ..data.datasets import batches, load_dataset
from ..data.pipeline import Pipeline, pipeline_for
from ..errors import UsageError
from ..nn.model import AlexNet, count_parameters
from ..runs.folder import Checkpoints, RunFolder
from ..runs.load import LoadedRun
from ..runtime import Dist, all_sum, device_name, git_commit, log, shutdown_distributed, start
from ..use.evaluate import evaluate_views
from . import curriculum, finetune, probe, state
from .schedule import Schedule
from .stall import stall_warning
from .state import Progress
from .step import TrainStep, wrap
from .stop import StopRequest

CHECK_EVERY = 10  # steps between checks of the loss (a host sync) and, under torchrun, of stop requests
BAR_EVERY = 10  # steps between progress-bar updates (each reads the loss: a host sync)


@dataclass
class Training:
    """A training run while it runs."""

    config: cfgmod.RunConfig
    folder: RunFolder
    ddp: Dist
    device: torch.device
    model: torch.nn.Module  # the plain model: what checkpoints store
    step: TrainStep  # its net (the model, or DDP around it), optimiser and grad scaler
    schedule: Schedule
    stop: StopRequest  # signals, the agreed stop, the test fault
    pipeline: Pipeline  # the training input pipeline, statistics on the device
    carried: dict  # what every checkpoint carries besides the training state: classes and the eval pipeline
    progress: Progress = field(default_factory=Progress)
    resumed: dict | None = None  # inside-epoch state from the checkpoint, for the epoch under way
    train_input: Pipeline | probe.CachedInput | None = None  # what each batch goes through: the pipeline, or
    #   nothing for rows of cached features (train.cached_features)

    @property
    def checkpoints(self) -> Checkpoints:
        return self.folder.checkpoint_files(self.config.train.keep_checkpoints)


def train(config: cfgmod.RunConfig, out: Path, resume: LoadedRun | None = None,
          init: LoadedRun | None = None) -> dict:
    """Run training into the run folder ``out``, or continue the run whose last checkpoint ``resume``
    holds (``runs.load.load_run(out / "checkpoints/last.pt")``), or fine-tune ``init``'s network
    (``finetune.py``; ``config`` from ``finetune.fine_tune_config``); returns the summary."""
    ddp, device = start(config.seed, config.train.threads, config.train.device)
    if init is not None:
        finetune.check_fits(init, config)  # before any file is written
    elif resume is not None and config.init.path:
        finetune.check_views(finetune.tested_pipeline(resume), config)
    with StopRequest(ddp) as stop:  # from here on SIGTERM/SIGINT end the run with a checkpoint
        data = load_dataset(config.data, config.seed, ddp)
        config = classes_from_data(config, data)
        t = _begin(config, RunFolder(out), resume, init, ddp, device, data, stop)
        train_images, train_labels = _training_set(t, data)
        what = "feature rows" if config.train.cached_features else "images"
        ddp.log(f"training {config.recipe}: {len(train_labels)} {what}, "
                f"{len(train_labels) // config.data.batch_size} steps/epoch, {config.optim.epochs} epochs on "
                f"{device_name(device)}")
        while t.progress.epoch < config.optim.epochs and not _stopping(t):
            epoch_metrics = train_epoch(t, train_images, train_labels)
            if epoch_metrics is None:  # stopped inside the epoch, checkpoint written
                break
            _end_epoch(t, epoch_metrics, data)
    summary = _summary(t)
    if ddp.main:
        t.folder.close_tensorboard()
        t.folder.write_summary(summary)
        if t.stop.stopped:
            ddp.log(f"stopped by {t.stop.stopped} at step {t.progress.step}; continue with: "
                    f"alexnet train --out {out} --resume")
    shutdown_distributed()
    return summary


def _begin(config, folder: RunFolder, resume: LoadedRun | None, init: LoadedRun | None, ddp: Dist, device, data,
           stop: StopRequest) -> Training:
    """Build the model, its step and schedule, and restore them from ``resume`` when continuing; a
    fine-tune starts from ``init``'s network."""
    if resume is not None:
        state.check_resume(resume, config, data)  # before folder.start rewrites the run's config.toml
    model = _model(config, resume, init, data).to(device)
    model.set_lrn_compiled(config.train.compile_lrn)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cached = config.train.cached_features
    rows = len(data.train_labels) * (probe.views(config) if cached else 1)  # an image and its mirror
    steps_per_epoch = _steps_per_epoch(rows, config.data.batch_size, ddp.world, "feature rows" if cached else "")
    folder.start(cfgmod.to_toml(config), resume is not None, write=ddp.main)
    pipeline = _pipeline(config, resume, init, data).to(device)
    carried = {"classes": data.class_list(),
               "pipeline": pipeline.as_tested(config.data, config.optim.epochs).state_dict()}
    t = Training(config, folder, ddp, device, model, TrainStep.build(model, wrap(model, ddp, device), config),
                 Schedule(config.optim, steps_per_epoch), stop, pipeline, carried, train_input=pipeline)
    if resume is not None:
        state.restore(t, resume, data)
        if ddp.main:
            t.checkpoints.sweep()
            folder.trim_metrics(t.progress.epoch)
    if ddp.main:
        folder.open_tensorboard()
    return t


def _model(config, resume: LoadedRun | None, init: LoadedRun | None, data) -> torch.nn.Module:
    """The network that trains: the checkpoint's (resuming), the init's weights (fine-tuning) or a new one."""
    if resume is not None:
        return resume.model
    return finetune.start_model(init, config, data.classes) if init is not None else AlexNet(config.model)


def _pipeline(config, resume: LoadedRun | None, init: LoadedRun | None, data) -> Pipeline:
    """The training pipeline: the init's input for a fine-tune (also when it resumes: its checkpoint stores
    that input), else the data kind's with the training set's statistics."""
    if config.init.path:
        tested = resume.pipeline if resume is not None else finetune.tested_pipeline(init)
        return finetune.train_pipeline(tested, config, data)
    return pipeline_for(config, data)


def _training_set(t: Training, data) -> tuple:
    """What the epochs run over: the training images (a uint8 tensor moved to the device once, or shards),
    or the rows of cached features, with the part of the network that learns on them."""
    if not t.config.train.cached_features:
        images = data.train_images
        return (images.to(t.device) if isinstance(images, torch.Tensor) else images), data.train_labels
    rows, labels = probe.features(t, data)
    t.train_input = probe.CachedInput()
    t.step.net = probe.Head(t.model, probe.first_learning(t.config))
    return rows.to(t.device), labels


def classes_from_data(config: cfgmod.RunConfig, data) -> cfgmod.RunConfig:
    """``config`` with fc8's outputs set to the training data's class count; an explicit
    ``model.num_classes`` that disagrees is refused here, before any training or checkpoint."""
    found, given = len(data.classes), config.model.num_classes
    if found < 2:  # one class: the loss is 0 from the first step and nothing is learned
        where = config.data.path or config.data.dataset
        raise UsageError(f"the training data ({where}) has {found} class ({', '.join(data.classes) or 'none'}): a "
                         "classifier needs at least two; put each class's photos in its own folder, train/<class>/")
    if given is not None and given != found:
        where = config.data.path or config.data.dataset
        raise UsageError(f"model.num_classes={given} but the training data ({where}) has {found} classes; "
                         f"drop model.num_classes (fc8 then follows the data) or set it to {found}")
    return dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=found))


def _steps_per_epoch(images: int, batch: int, world: int, rows: str = "") -> int:
    """Full global batches per epoch; each of ``world`` processes takes batch / world images of each
    (``rows``: what they are called when they are not training images)."""
    if batch % world:
        raise UsageError(f"data.batch_size={batch} (the global batch) must be divisible by the {world} processes")
    if images < batch:
        raise UsageError(f"data.batch_size={batch} is larger than the {images} {rows or 'training images'}; "
                         "lower data.batch_size or raise data.limit")
    return images // batch


def validate(t: Training, data) -> dict:
    """The per-epoch validation pass on ``train.eval_crops`` views of each image, through the windows
    the network is tested on."""
    config, views = t.config, t.config.train.eval_crops
    pipeline = t.pipeline.as_tested(config.data, config.optim.epochs)
    return evaluate_views([t.model], data.val_images, data.val_labels, batch_size=config.data.eval_batch_size,
                          device=t.device, views=views, inputs=lambda x: pipeline.eval_inputs(x, views),
                          precision=config.train.precision, ddp=t.ddp)


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
    pipeline: Pipeline  # this epoch's training pipeline (low-resolution windows early on)


def train_epoch(t: Training, images, labels: torch.Tensor) -> dict | None:
    """One pass over a seeded permutation of the training set (or the rest of it, when resumed
    inside the epoch); updates ``t.progress``. Returns the epoch's metrics, or None when a stop
    request ended the epoch early (after writing a checkpoint).

    Every process draws the same order and takes its share of each global batch; rank 0 keeps
    drawing augmentations from the same stream, other ranks from their own.
    """
    epoch = _begin_epoch(t, len(labels))
    bar = _progress_bar(t, epoch.steps)
    d = t.config.data
    for x, y in batches(images, labels, epoch.order, d.batch_size, t.device, workers=d.workers, ddp=t.ddp,
                        start=t.progress.epoch_step, decode=d.decode):
        _step(t, epoch, x, y)
        stopping = _checkpoint_or_stop(t, epoch)
        _show_progress(bar, t, epoch)
        if stopping:
            bar.close()
            return None
    bar.close()
    return _epoch_metrics(t, epoch)


def _begin_epoch(t: Training, n: int) -> Epoch:
    """The epoch's state (fresh, or where a resumed checkpoint left it); the model in training mode."""
    steps = n // t.config.data.batch_size  # drop the ragged last batch: every step sees `batch` images
    order, generator, saved = state.epoch_state(t, n)
    t.model.train()
    if curriculum.set_frozen(t.model, curriculum.frozen(t.config, t.progress.epoch)) and t.ddp.world > 1:
        t.step.net = wrap(t.model, t.ddp, t.device)  # DDP reduces the gradients of the learning layers only
    device = t.device
    return Epoch(steps, order, generator, torch.tensor(saved, dtype=torch.float32, device=device),
                 steps - _end_steps(steps), torch.zeros((), dtype=torch.int64, device=device),
                 time.perf_counter(), t.progress.epoch_step, t.train_input.for_epoch(t.config.data, t.progress.epoch))


def _step(t: Training, epoch: Epoch, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step on a uint8 batch: augment, set the learning rate, train, add to the sums."""
    p = t.progress
    x = epoch.pipeline.train(x, epoch.generator)
    for group in t.step.optimizer.param_groups:  # lr_scale: the layers a fine-tune took from its init
        group["lr"] = t.schedule.lr(p.step) * group.get("lr_scale", 1.0)
    loss, logits, taken = t.step(x, y)
    if taken:
        epoch.sums += _step_sums(loss.detach(), logits.detach(), y, p.epoch_step >= epoch.end_from,
                                 t.config.optim.label_smoothing)
    else:
        p.skipped_steps += 1
        t.ddp.log(f"step {p.step + 1}: loss is {loss.item()}, step skipped (train.on_nonfinite=skip)")
    p.step += 1
    p.epoch_step += 1
    epoch.first_bad = torch.where((epoch.first_bad == 0) & ~torch.isfinite(loss.detach()), p.step, epoch.first_bad)


def _checkpoint_or_stop(t: Training, epoch: Epoch) -> bool:
    """After a step: check the loss and stop requests every CHECK_EVERY steps, write a checkpoint every
    ``train.checkpoint_every_steps`` steps or when stopping; returns whether the run stops here."""
    p, every = t.progress, t.config.train.checkpoint_every_steps
    due = every > 0 and p.step % every == 0 and p.epoch_step < epoch.steps  # the last step saves at epoch end
    check = p.epoch_step % CHECK_EVERY == 0 or p.epoch_step == epoch.steps or (t.ddp.world == 1 and t.stop.signal)
    stopping = _guard(t, epoch.first_bad) if due or check else False
    if due or stopping:
        _clock_epoch(t, epoch)
        state.save(t, best=False, order=epoch.order, generator=epoch.generator, sums=epoch.sums.tolist())
    if p.epoch_step < epoch.steps:  # the epoch's last step: after its checkpoint, in _end_epoch
        t.stop.fault(p.step)
    return stopping


def _stopping(t: Training) -> bool:
    """Between epochs: whether a stop request reached any process (the last checkpoint is current)."""
    t.stop.agree(0, t.device)
    return t.stop.stopped is not None


def _guard(t: Training, first_bad: torch.Tensor) -> bool:
    """Stop with a message naming the step if any loss so far was not finite (before anything is
    saved, so the last good checkpoint stays); returns whether the processes agreed to stop."""
    bad = t.stop.agree(int(first_bad.item()), t.device)
    if bad and t.config.train.on_nonfinite == "stop":
        last = t.checkpoints.last
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written"
        raise UsageError(f"the training loss became nan or inf at step {bad} (epoch {t.progress.epoch + 1}); "
                         f"the run stopped and {kept}. Lower optim.lr, try train.precision=fp32, or set "
                         "train.on_nonfinite=skip to skip such steps")
    return t.stop.stopped is not None


def _clock_epoch(t: Training, epoch: Epoch) -> float:
    """Add the time since the epoch's clock was last read to ``progress.epoch_seconds``; return that total."""
    now = time.perf_counter()
    t.progress.epoch_seconds += now - epoch.clock
    epoch.clock = now
    return t.progress.epoch_seconds


def _progress_bar(t: Training, steps: int) -> tqdm:
    p, config = t.progress, t.config
    return tqdm(total=steps, initial=p.epoch_step, desc=f"epoch {p.epoch + 1}/{config.optim.epochs}", file=sys.stderr,
                disable=not (config.train.progress and t.ddp.main), unit="step", leave=False, dynamic_ncols=True)


def _show_progress(bar: tqdm, t: Training, epoch: Epoch) -> None:
    """Every BAR_EVERY steps and at the epoch's end: the loss so far, images/s and the run's ETA."""
    p, config = t.progress, t.config
    if bar.disable or not (p.epoch_step % BAR_EVERY == 0 or p.epoch_step == epoch.steps):
        return
    batch = config.data.batch_size
    seconds = p.epoch_seconds + time.perf_counter() - epoch.clock
    rate = (p.epoch_step - epoch.done_before) * batch / max(seconds, 1e-9)
    remaining = (config.optim.epochs - p.epoch) * epoch.steps - p.epoch_step
    loss = epoch.sums[0].item() / max(p.epoch_step, 1)
    bar.set_postfix_str(f"loss {loss:.3f}  {rate:.0f} img/s  run ETA {_clock(remaining * batch / max(rate, 1e-9))}")
    bar.update(p.epoch_step - bar.n)


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(0, seconds)))


def _epoch_metrics(t: Training, epoch: Epoch) -> dict:
    """The finished epoch's metrics (summed over processes); its time moves to ``train_seconds``."""
    p, batch, steps, world = t.progress, t.config.data.batch_size, epoch.steps, t.ddp.world
    seconds = _clock_epoch(t, epoch)
    p.epoch_seconds = 0.0
    p.train_seconds += seconds
    p.images_seen += steps * batch
    per_process = torch.tensor([world, 1, 1, world], device=t.device)  # loss sums are means over each process's share
    loss, correct, mode, end_loss = all_sum((epoch.sums / per_process).tolist(), t.device)
    return {"train_loss": loss / steps, "train_loss_end": end_loss / _end_steps(steps),
            "train_top1_err": 1 - correct / (steps * batch), "images_per_s": steps * batch / max(seconds, 1e-9),
            "train_mode_share": mode / (steps * batch)}


def _end_steps(steps: int) -> int:
    """How many of an epoch's last steps ``train_loss_end`` averages: a tenth, at least 10."""
    return min(steps, max(10, steps // 10))


def _step_sums(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, at_end: bool,
               smoothing: float = 0.0) -> torch.Tensor:
    """One step's contribution to ``state.EPOCH_SUMS``, in its order (on the device); ``loss`` is the step's objective,
    replaced by the cross-entropy with the labels when they were smoothed."""
    if smoothing:
        loss = F.cross_entropy(logits.float(), y)
    predicted = logits.argmax(1)
    mode = torch.bincount(predicted, minlength=logits.shape[1]).max()
    return torch.stack([loss, (predicted == y).sum().float(), mode.float(), loss * float(at_end)])


def _end_epoch(t: Training, epoch_metrics: dict, data) -> None:
    """Validate when due, step the plateau schedule, log the epoch, write the epoch-end checkpoint."""
    config, p = t.config, t.progress
    p.epoch += 1
    p.epoch_step = 0
    evaluated = p.epoch == config.optim.epochs or p.epoch % config.train.eval_every == 0
    if evaluated:
        started = time.perf_counter()
        p.last_eval = validate(t, data)
        p.train_seconds += time.perf_counter() - started
        if t.schedule.end_epoch(p.last_eval["val_top1_err"]):
            t.ddp.log(f"validation error stopped improving: learning rate / 10 (drop {t.schedule.drops})")
    best = evaluated and p.last_eval["val_top1_err"] <= p.best_val_top1_err  # ties count: the newer net
    if evaluated:
        p.best_val_top1_err = min(p.best_val_top1_err, p.last_eval["val_top1_err"])
    row = _epoch_row(p, epoch_metrics, t.schedule, evaluated)
    if t.ddp.main:  # one writer: rank 0 logs and checkpoints
        t.folder.append_metrics(row)
        _log_epoch(row)
        warning = stall_warning(p.epoch, row["train_loss"], config.model.num_classes, row["train_mode_share"],
                                p.last_eval["top_class_share"] if evaluated else None, config,
                                t.model.fc8.in_features)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    if evaluated or p.epoch % config.train.checkpoint_every_epochs == 0:
        state.save(t, best=best)
    t.stop.fault(p.step)


def _epoch_row(progress: Progress, epoch_metrics: dict, schedule: Schedule, evaluated: bool) -> dict:
    """One metrics.jsonl line; the validation errors are null in epochs without a validation pass."""
    row = {"epoch": progress.epoch, **epoch_metrics}
    row["val_top1_err"] = progress.last_eval["val_top1_err"] if evaluated else None
    row["val_top5_err"] = progress.last_eval["val_top5_err"] if evaluated else None
    row["lr"] = schedule.lr(max(0, progress.step - 1))
    row["elapsed_s"] = round(progress.train_seconds, 2)
    return row


def _log_epoch(row: dict) -> None:
    errs = (f"val top-1 {row['val_top1_err']:.4f}  top-5 {row['val_top5_err']:.4f}"
            if row["val_top1_err"] is not None else "")
    log(f"epoch {row['epoch']}: loss {row['train_loss']:.4f} (last tenth {row['train_loss_end']:.4f})  "
        f"train err {row['train_top1_err']:.4f}  {errs}  {row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f}s")


def _summary(t: Training) -> dict:
    progress, config, device, world = t.progress, t.config, t.device, t.ddp.world
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
        "parameters": count_parameters(t.model),
        "step": progress.step,
        "skipped_steps": progress.skipped_steps,
        "stopped": t.stop.stopped,  # SIGTERM / SIGINT when a signal ended the run early, else null
        "init": {"path": config.init.path, "sha256": config.init.sha256} if config.init.path else None,
    }
