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

Files: every save writes ``step-<step>.pt`` (temp file, fsync, rename); ``last.pt`` and
``best.pt`` are hard links to step files, so they cost no second write or disk space. The
newest ``train.keep_checkpoints`` step files are kept. A failed write (disk full, no
permission) leaves the previous ``last.pt`` in place and stops the run with one line.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import save_checkpoint
from .errors import UsageError
from .files import atomic_link

STEP_FILE = re.compile(r"step-(\d+)\.pt")


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


# --------------------------------------------------------------------------- files


class Checkpoints:
    """The run's checkpoint folder: step files, ``last.pt`` and ``best.pt`` links, pruning."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = folder, keep  # keep >= 1: TrainConfig checks it

    def sweep(self) -> None:
        """Remove temp files a killed run left behind (its last complete checkpoint stays)."""
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def save(self, model, config: dict, state: dict, step: int, best: bool) -> Path:
        """Write step ``step``'s checkpoint, point ``last.pt`` (and ``best.pt``) at it, prune old ones."""
        path = self.folder / f"step-{step:09d}.pt"
        try:
            save_checkpoint(path, model, config, **state)
            atomic_link(path, self.last)
            if best:
                atomic_link(path, self.folder / "best.pt")
        except OSError as err:
            kept = f"the previous checkpoint {self.last} is kept" if self.last.exists() else "no checkpoint exists yet"
            raise UsageError(f"could not write checkpoint {path} ({err.strerror or err}); {kept}: free disk space "
                             "or fix the folder's permissions, then continue with --resume") from None
        self._prune()
        return path

    def _prune(self) -> None:
        steps = sorted(p for p in self.folder.iterdir() if STEP_FILE.fullmatch(p.name))
        for old in steps[:-self.keep]:
            old.unlink(missing_ok=True)  # last.pt / best.pt are links of their own: they stay
