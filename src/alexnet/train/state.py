"""What a training checkpoint carries to continue a run exactly, and how checkpoints are kept.

A run can stop anywhere: between epochs, inside one (``train.checkpoint_every_steps``, SIGTERM),
or by ``kill -9``. To continue so that the final weights are bit-for-bit those of an
uninterrupted run (on the CPU), a checkpoint holds besides the model, optimiser, schedule and
scaler:

* ``progress``: epochs done, optimiser steps done and steps done inside the current epoch;
* ``data``: inside an epoch, the epoch's sample order (int32);
* ``ranks``: per process, the python, numpy, torch CPU and CUDA generator states (dropout
  draws from torch's), the state of the epoch's generator that draws crops, flips and
  lighting, and the epoch's running loss and accuracy sums (for its metrics row).

``save`` writes such a checkpoint (``runs.folder.Checkpoints``: step files, ``last.pt``,
``best.pt``) and ``restore`` continues a run from one; ``epoch_state`` gives an epoch its order,
generator and sums, fresh from the seed or from the checkpoint of a run resumed inside it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from .. import config as cfgmod
from ..errors import UsageError
from ..runtime import all_sum

# An epoch's seeded streams (``epoch_state``): the order and rank 0's augmentations of epoch e of seed
# s come from seed s * EPOCH_SEED_STRIDE + e; process r > 0 draws its augmentations from that plus
# RANK_SEED_STRIDE * r; a run resumed inside an epoch on another number of processes (whose saved
# generators do not fit) draws new ones from that plus RESUMED_STEP_STRIDE * step. The strides are
# primes, so no two of these seeds meet for realistic seeds, epochs, ranks and steps.
EPOCH_SEED_STRIDE = 100_003
RANK_SEED_STRIDE = 7_919
RESUMED_STEP_STRIDE = 104_729


@dataclass
class Progress:
    """Where a run is: what a checkpoint must carry to continue it."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken in the whole run
    epoch_step: int = 0  # batches done in the epoch under way (0 between epochs)
    train_seconds: float = 0.0
    images_seen: int = 0
    best_val_top1_err: float = math.inf
    last_eval: dict = field(default_factory=dict)
    epoch_seconds: float = 0.0  # training time so far in the epoch under way
    skipped_steps: int = 0  # steps whose loss was not finite (train.on_nonfinite = "skip")


# --------------------------------------------------------------------------- random states


def rng_state(generator: torch.Generator | None = None) -> dict:
    """This process's random states, in types ``torch.load(weights_only=True)`` reads back."""
    version, keys, gauss = random.getstate()
    _, mt, pos, has_gauss, cached = np.random.get_state()
    return {"python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
            "numpy": {"keys": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "epoch_generator": generator.get_state() if generator is not None else None}


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state``'s global generators (the epoch generator is restored by its epoch)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["keys"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def gather(obj, world: int) -> list:
    """``obj`` from every process, in rank order, on every process (a collective: all must call)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# A training epoch's running sums: the loss, the correct predictions, the images predicted as their
# batch's most frequent class (all of them: the net predicts one class, see stall.py), and the
# loss of the epoch's last tenth of steps (where the epoch ends, beside its mean). The loss is the
# cross-entropy with the labels: with optim.label_smoothing the objective also holds the smoothing
# term, which is never below smoothing * ln(classes) and so would lift every reported loss; without
# it train_loss compares with val_loss and with ln(classes), the loss of a constant prediction.
EPOCH_SUMS = ("loss", "correct", "mode", "end_loss")


def save(training, best: bool, order: torch.Tensor | None = None, generator: torch.Generator | None = None,
         sums: list[float] | None = None) -> None:
    """A checkpoint of ``training`` (``loop.Training``) now: at an epoch end, or inside one with its order,
    generator and sums. Every process calls it (their random states are gathered); rank 0 writes, and
    every process stops if that fails."""
    t = training
    ranks = gather({"rng": rng_state(generator), "sums": list(sums or [0.0] * len(EPOCH_SUMS))}, t.ddp.world)
    error = None
    if t.ddp.main:
        state = {"optimizer": t.step.optimizer.state_dict(), "schedule": t.schedule.state_dict(),
                 "scaler": t.step.scaler.state_dict(), "progress": vars(t.progress), "ranks": ranks,
                 "data": {"order": order.to(torch.int32) if order is not None else None}, **t.carried}
        try:
            t.checkpoints.save(t.model, cfgmod.to_dict(t.config), state, t.progress.step, best)
        except UsageError as err:
            error = err
    failed = all_sum([1.0 if error else 0.0], t.device)[0]  # every process learns of rank 0's failure
    if error:
        raise error
    if failed:
        raise UsageError("rank 0 could not write a checkpoint (see its message); stopping every process")


def check_resume(resume, config, data) -> None:
    """Refuse, before the run folder is touched (its config.toml rewritten), to continue ``resume`` on ``data``
    that holds other classes than the run learned (another --data), or with the two-device tower split
    switched on or off."""
    resume.check_classes(data)
    stored = resume.checkpoint.get("config", {}).get("model", {}).get("tower_devices", "")
    if bool(stored) != bool(config.model.tower_devices):  # the split net's optimiser state is per half
        raise UsageError(f"{resume.path} was trained with model.tower_devices={stored!r}; continue it with a "
                         f"{'non-empty' if stored else 'empty'} model.tower_devices (the optimiser state is per tower "
                         "half when split), or start a new run from its weights")


def restore(training, resume, data) -> None:
    """Continue ``training`` from ``resume`` (a ``runs.load.LoadedRun``; its weights are already the
    model's, ``check_resume`` has accepted it): optimiser, schedule, scaler, progress and this process's
    random states."""
    t, ckpt, path = training, resume.checkpoint, resume.path
    t.step.optimizer.load_state_dict(ckpt["optimizer"])
    t.schedule.load_state_dict(ckpt["schedule"])
    t.step.scaler.load_state_dict(ckpt["scaler"])
    t.progress = Progress(**ckpt["progress"])
    ranks = ckpt.get("ranks") or []
    mine = ranks[t.ddp.rank] if len(ranks) == t.ddp.world else None
    if mine is not None:
        set_rng_state(mine["rng"])
    elif ranks:
        t.ddp.log(f"{path} was written by {len(ranks)} processes, this run has {t.ddp.world}: the data order "
                  "and weights continue, random augmentations and dropout do not repeat the original run exactly")
    order = (ckpt.get("data") or {}).get("order")
    if t.progress.epoch_step and order is not None:
        t.resumed = {"order": order, "generator": mine["rng"]["epoch_generator"] if mine else None,
                     "sums": list(mine["sums"]) if mine else [0.0] * len(EPOCH_SUMS)}
    where = f"inside epoch {t.progress.epoch + 1} at step {t.progress.step}" if t.progress.epoch_step \
        else f"after epoch {t.progress.epoch}"
    t.ddp.log(f"resuming from {path} {where}")


def epoch_state(training, n: int) -> tuple[torch.Tensor, torch.Generator, list[float]]:
    """The epoch's sample order, its augmentation generator and its running sums: from the checkpoint
    when resuming inside the epoch, else fresh from the seed and the epoch number (the strides above
    keep epochs, processes and resumed steps apart)."""
    t = training
    p, rank = t.progress, t.ddp.rank
    generator = torch.Generator()
    seed = t.config.seed * EPOCH_SEED_STRIDE + p.epoch
    resumed, t.resumed = t.resumed, None
    if resumed is not None and p.epoch_step > 0:
        if resumed["generator"] is not None:
            generator.set_state(resumed["generator"])
        else:  # the number of processes changed: the data order is kept, augmentations are new
            generator.manual_seed(seed + RANK_SEED_STRIDE * rank + RESUMED_STEP_STRIDE * p.step)
        return resumed["order"].long(), generator, list(resumed["sums"])
    generator.manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    if rank:
        generator.manual_seed(seed + RANK_SEED_STRIDE * rank)
    return order, generator, [0.0] * len(EPOCH_SUMS)
