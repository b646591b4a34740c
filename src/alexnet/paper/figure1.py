"""The paper's Figure 1, ReLU against tanh training error on CIFAR-10.

Section 3.1: "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25%
training error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons
(dashed line). The learning rates for each network were chosen independently to make training
as fast as possible. No regularization of any kind was employed."

The experiment, as this module runs it:

- Network: ``FourLayerNet``, three convolutional layers and one fully-connected layer, the
  layout of cuda-convnet's small CIFAR-10 example net (``layers-80sec.cfg``; the paper does not
  give Figure 1's exact net): conv1 32@5x5 -> act -> max-pool 3/2 -> conv2 32@5x5 -> act ->
  max-pool 3/2 -> conv3 64@5x5 -> act -> max-pool 3/2 -> fc4 10 (89,578 parameters). Deviations
  from that file: no LRN and max (not average) pooling everywhere, the same for both nets.
  ``activation`` is the only difference between the two nets (``nn.ReLU`` or ``nn.Tanh``).
- Init and input scale, the two things the paper leaves open for Figure 1 (``--setup``), the
  same for both nets, from the same seed, so both start from identical weights:
  ``paper`` (default): the paper's own conventions elsewhere, as cuda-convnet ran them: weights
  N(0, 0.01) (section 5; biases 0 here, not section 5's ReLU-only bias of 1) and inputs that
  are the 0..255 pixels minus the training set's mean image (section 2), so the first layer
  sees pre-activations of a few units. ``modern``: LeCun normal N(0, 1/fan_in), biases 0, and
  per-channel standardised inputs: the classic init for tanh (Efficient BackProp, 1998), which
  keeps tanh units in their near-linear range. The two setups give opposite answers on CIFAR-10
  (tanh/ReLU epochs to 25%: 6.1 with ``paper``, 0.9 with ``modern``; docs/figure1.md).
- Training: plain SGD, momentum 0.9, batch 128, fixed learning rate, no weight decay, no
  dropout, no data augmentation, fp32, channels_last, the same seeded batch order for every run.
- Learning rates: a sweep over ``--lrs`` (default: the setup's grid, see ``SETUPS``), each trained for
  ``--sweep-epochs`` (default 2) epochs from the first seed, the same grid and budget for both
  activations; the rate with the lowest training error over the last sweep epoch wins (ties: the
  smaller rate). ``--lr relu=R,tanh=R`` gives the rates instead (for example those of an earlier
  sweep, which figure1.json records). The sweep's winner is trained on from where it stopped:
  everything is seeded, so its curve is exactly the curve of a fresh run at that rate.
- Seeds (``--seeds``, default 0,1,2): every seed trains both nets at the chosen rates; a seed
  sets the initial weights (the same for both nets) and the batch order. The images are the same
  for every seed (``--limit`` subsets are drawn with seed 0, so separate processes agree).
- Training error of an epoch: the fraction of misclassified examples over that epoch's
  training batches, as they were trained on (as the paper's plot), placed at x = epochs done.
- Every curve runs ``--epochs`` epochs (default 40), so both nets cover the same range. Epochs to
  a threshold are fractional, linearly interpolated between the epoch points (an untrained net is
  taken as 0.9 error, chance for ten classes, at epoch 0); a curve that never reaches it gives its
  last epoch as a lower bound (``*_lower_bound: true``), and then the ratio is a lower bound too.
  The ratio is mean tanh epochs / mean ReLU epochs over the seeds (each seed's own ratio is
  recorded too), at 25% and at the other thresholds of ``THRESHOLDS``: how much the answer hangs
  on the paper's choice of 25%.
- Each run's state (weights, momentum, curve) is saved after every epoch under ``--out``/runs:
  a stopped figure1 continues where it stopped, and runs of the same settings are reused, so
  seeds can be trained by separate processes into the same ``--out`` and drawn together.

Outputs in ``--out`` (default runs/figure1): ``figure1.png`` (the paper's style: training
error rate against epochs, ReLU solid, tanh dashed, the mean over seeds with their range shaded,
a line at 0.25, and the threshold table beside it), ``figure1.json`` (the setup, the sweep, every
curve, the threshold table, times) and ``figure1.md`` (the table). One JSON line on stdout sums it up.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UsageError
from ..runtime import log
from .figure1_results import ACTIVATIONS, CHANCE, THRESHOLD, THRESHOLDS, crossings, plot, summary_of, table_markdown

SUBSET_SEED = 0  # --limit subsets: the same images for every seed and every process
# Init, inputs and learning-rate grid of each --setup (module docstring); both activations get the
# same grid. paper: a one-epoch probe on 20,000 images put ReLU's best rate at 0.003 (0.01 diverges)
# and tanh's at 0.03 or above, so the grid spans 0.001-0.1 to hold both optima inside it.
SETUPS = {
    "paper": {"init": "N(0, 0.01) weights, biases 0 (section 5)",
              "inputs": "0..255 pixels minus the training set's mean image (section 2)",
              "lrs": (0.001, 0.003, 0.01, 0.03, 0.1)},
    "modern": {"init": "LeCun normal N(0, 1/fan_in), biases 0",
               "inputs": "per-channel standardisation (x / 255 - mean) / std",
               "lrs": (0.003, 0.01, 0.03, 0.1)},
}

@dataclass(frozen=True)
class Figure1Config:
    """The experiment's settings (the command's options; module docstring for what they mean)."""

    setup: str = "paper"  # paper | modern (SETUPS)
    lrs: tuple[float, ...] = ()  # learning-rate grid for both activations; empty: the setup's
    chosen: tuple[tuple[str, float], ...] = ()  # (activation, rate) pairs used instead of a sweep
    epochs: int = 40  # epochs of every curve
    sweep_epochs: int = 2  # epochs per learning rate in the sweep
    batch_size: int = 128  # images per SGD step
    limit: int = 0  # >0: a class-balanced subset of this many training images (drawn with SUBSET_SEED)
    seeds: tuple[int, ...] = (0, 1, 2)  # the init and the batch order of each curve
    threads: int = 0  # CPU threads the command sets; 0: the cores this process may use
    data: str | None = None  # CIFAR-10 location; None: cache, mirror, download

    def __post_init__(self):
        for name in ("epochs", "sweep_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if self.limit < 0:
            raise UsageError(f"--limit must not be negative; got {self.limit}")
        if self.sweep_epochs > self.epochs:
            raise UsageError(f"--sweep-epochs {self.sweep_epochs} is more than --epochs {self.epochs}; lower it")
        if self.setup not in SETUPS:
            raise UsageError(f"--setup must be one of {', '.join(SETUPS)}; got {self.setup!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise UsageError(f"--seeds must be distinct non-negative integers such as 0,1,2; got {self.seeds}")

    @property
    def grid(self) -> list[float]:
        return sorted(self.lrs or SETUPS[self.setup]["lrs"])


class FourLayerNet(nn.Module):
    """The Figure 1 network (see the module docstring); ``activation`` is its only switch."""

    def __init__(self, activation: str, setup: str = "paper"):
        super().__init__()
        if activation not in ACTIVATIONS or setup not in SETUPS:
            raise ValueError(f"activation must be relu or tanh and setup paper or modern; "
                             f"got {activation!r}, {setup!r}")
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc4 = nn.Linear(64 * 4 * 4, 10)
        self.act = nn.ReLU() if activation == "relu" else nn.Tanh()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # 32 -> 16 -> 8 -> 4
        for layer in (self.conv1, self.conv2, self.conv3, self.fc4):
            std = 0.01 if setup == "paper" else 1.0 / math.sqrt(layer.weight[0].numel())  # LeCun: 1/sqrt(fan_in)
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = self.pool(self.act(self.conv3(x)))
        return self.fc4(x.flatten(1))


class Inputs:
    """uint8 batches -> the setup's float network inputs (channels_last)."""

    def __init__(self, setup: str, train_images: torch.Tensor):
        self.setup = setup
        # paper: the training set's mean image on the 0..255 scale (section 2)
        self.mean_image = train_images.float().mean(0) if setup == "paper" else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from ..data.augment import normalize, subtract_mean_image
        from ..data.pipeline import CIFAR10_MEAN, CIFAR10_STD

        if self.setup == "paper":
            return subtract_mean_image(images, self.mean_image, channels_last=True)
        return normalize(images, CIFAR10_MEAN, CIFAR10_STD, channels_last=True)


class Trial:
    """One network at one learning rate and seed: its model, optimiser and per-epoch curve."""

    def __init__(self, activation: str, lr: float, seed: int, inputs: Inputs):
        torch.manual_seed(seed)  # the same initial weights for every activation and rate
        self.activation, self.lr, self.seed, self.inputs = activation, lr, seed, inputs
        self.model = FourLayerNet(activation, inputs.setup).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
        self.errors: list[float] = []
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self.diverged = False
        self.curve_only = False  # restored from a curve without weights (Store): cannot train on

    @property
    def name(self) -> str:
        return f"{self.activation}-lr{self.lr:g}-seed{self.seed}"

    def train_epoch(self, images, labels, batch_size: int) -> float:
        """One pass in the seed's order for this epoch; returns the error over its batches."""
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed * 100_003 + len(self.errors))
        order = torch.randperm(len(labels), generator=generator)
        steps = len(labels) // batch_size  # full batches only
        wrong, loss_sum = torch.zeros((), dtype=torch.long), torch.zeros(())
        self.model.train()
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x, y = self.inputs(images[idx]), labels[idx]
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            wrong += (logits.detach().argmax(1) != y).sum()
            loss_sum += loss.detach()
        self.errors.append(wrong.item() / (steps * batch_size))
        self.losses.append(loss_sum.item() / steps)
        self.seconds.append(time.perf_counter() - started)
        self.diverged = not math.isfinite(self.losses[-1])
        return self.errors[-1]

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "errors": self.errors, "losses": self.losses, "seconds": self.seconds, "diverged": self.diverged}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.errors, self.losses, self.seconds = list(state["errors"]), list(state["losses"]), list(state["seconds"])
        self.diverged = bool(state["diverged"])

    def record(self, epochs: int | None = None) -> dict:
        """The curve of the first ``epochs`` epochs (all by default)."""
        errors, losses, seconds = self.errors[:epochs], self.losses[:epochs], self.seconds[:epochs]
        return {"lr": self.lr, "seed": self.seed, "train_error": [round(e, 5) for e in errors],
                "train_loss": [round(v, 5) if math.isfinite(v) else None for v in losses],
                "epoch_seconds": [round(s, 2) for s in seconds],
                "diverged": bool(losses) and not math.isfinite(losses[-1])}


class Store:
    """Each run's state in ``folder``, saved atomically after every epoch and restored only when it
    was trained with the same settings (``key``): a stopped figure1 continues where it stopped.

    ``NAME.pt`` holds the weights, the momentum and the curve; ``NAME.json`` the key and the curve
    alone (a few KB, fit to keep with the figure): a run found only as JSON is reused when its
    curve is long enough, and trained again from the start when it is not."""

    def __init__(self, folder: Path, key: dict, log=print):
        self.folder, self.key, self.log = folder, key, log

    def _key(self, trial: Trial) -> dict:
        return {**self.key, "activation": trial.activation, "lr": trial.lr, "seed": trial.seed}

    def restore(self, trial: Trial) -> Trial:
        weights, curve = self.folder / f"{trial.name}.pt", self.folder / f"{trial.name}.json"
        for path in (weights, curve):
            if not path.is_file():
                continue
            state = (torch.load(path, map_location="cpu", weights_only=True) if path is weights
                     else json.loads(path.read_text()))
            if state.get("key") != self._key(trial):
                self.log(f"figure1: {path} was trained with other settings; not using it")
                continue
            if path is weights:
                trial.load_state(state)
            else:
                trial.errors, trial.losses, trial.seconds = state["errors"], state["losses"], state["seconds"]
                trial.diverged, trial.curve_only = state["diverged"], True
            self.log(f"figure1: {trial.name}: continuing from epoch {len(trial.errors)} ({path})")
            break
        return trial

    def save(self, trial: Trial) -> None:
        from ..files import atomic_write

        self.folder.mkdir(parents=True, exist_ok=True)
        key, state = self._key(trial), trial.state()
        atomic_write(self.folder / f"{trial.name}.pt", lambda f: torch.save({"key": key, **state}, f), fsync=False)
        curve = {"key": key, **{k: state[k] for k in ("errors", "losses", "seconds", "diverged")}}
        (self.folder / f"{trial.name}.json").write_text(json.dumps(curve) + "\n")


def train_to(trial: Trial, epochs: int, images, labels, batch_size: int, store: Store, log=print) -> Trial:
    """Train ``trial`` until it has ``epochs`` epochs (or diverged), saving it after each one."""
    if trial.curve_only and len(trial.errors) < epochs and not trial.diverged:
        log(f"figure1: {trial.name}: its stored curve has {len(trial.errors)} epochs and no weights; training it again")
        trial = Trial(trial.activation, trial.lr, trial.seed, trial.inputs)
    while len(trial.errors) < epochs and not trial.diverged:
        error = trial.train_epoch(images, labels, batch_size)
        store.save(trial)
        log(f"figure1: {trial.name} epoch {len(trial.errors)}: training error {error:.4f}  "
            f"loss {trial.losses[-1]:.4f}  {trial.seconds[-1]:.1f}s")
    return trial


def sweep(activation: str, lrs: list[float], epochs: int, images, labels, batch_size: int, seed: int,
          inputs: Inputs, store: Store, log=print) -> tuple[float, list[dict]]:
    """Train each rate for ``epochs``; return the best rate (lowest last-epoch error) and all records."""
    runs = []
    for lr in lrs:
        trial = train_to(store.restore(Trial(activation, lr, seed, inputs)), epochs, images, labels, batch_size, store,
                        lambda _: None)
        record = trial.record(epochs)  # a run restored past the sweep is judged on its sweep epochs
        log(f"figure1: sweep {activation} lr {lr:g}: training error {record['train_error'][-1]:.4f}"
            f"{' (diverged)' if record['diverged'] else ''} after {len(record['train_error'])} epoch(s)")
        runs.append(record)
    best = min(runs, key=lambda r: (math.inf if r["diverged"] else r["train_error"][-1], r["lr"]))
    return best["lr"], runs


def figure1(config: Figure1Config, out: Path) -> dict:
    """Run the experiment into ``out``; return the summary (the JSON line)."""
    from ..data.cifar.load import load_cifar10

    c = config
    started = time.monotonic()
    threads = torch.get_num_threads()  # the command sets it (config.threads or the usable cores)
    train, _ = load_cifar10(c.data, limit=c.limit or None, seed=SUBSET_SEED)
    if len(train) < c.batch_size:
        raise UsageError(f"--batch-size {c.batch_size} is larger than the {len(train)} training images; raise --limit")
    inputs = Inputs(c.setup, train.images)
    store = Store(out / "runs", {"setup": c.setup, "batch_size": c.batch_size, "limit": c.limit,
                                 "subset_seed": SUBSET_SEED, "train_images": len(train)}, log)
    chosen = dict(c.chosen)
    log(f"figure1: {len(train)} training images, {threads} threads, seeds {list(c.seeds)}, {c.epochs} epochs per "
        f"curve, learning rates {chosen or c.grid}")
    curves, sweeps = {}, {}
    for activation in ACTIVATIONS:
        if activation in chosen:
            lr, sweeps[activation] = chosen[activation], "given (--lr)"
        else:
            lr, sweeps[activation] = sweep(activation, c.grid, c.sweep_epochs, train.images, train.labels,
                                           c.batch_size, c.seeds[0], inputs, store, log)
        log(f"figure1: {activation}: learning rate {lr:g}")
        curves[activation] = []
        for seed in c.seeds:
            trial = train_to(store.restore(Trial(activation, lr, seed, inputs)), c.epochs, train.images, train.labels,
                            c.batch_size, store, log)
            curves[activation].append(trial.record(c.epochs))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / "figure1.png", "json": out / "figure1.json", "md": out / "figure1.md"}
    table = crossings(curves)
    wall = time.monotonic() - started
    edge = {a: lr in (c.grid[0], c.grid[-1]) for a, lr in ((a, curves[a][0]["lr"]) for a in ACTIVATIONS)
            if a not in chosen}
    summary = {**summary_of(curves, table, c.setup, wall, paths), "lr_at_grid_edge": edge}
    plot(curves, table, paths["png"], c.setup)
    paths["md"].write_text(table_markdown(table, curves))
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
               "threads": threads, "torch_version": torch.__version__}
    paths["json"].write_text(json.dumps({"summary": summary, "setup": _described(c, len(train)), "sweep": sweeps,
                                         "curves": curves, "thresholds": table, "machine": machine,
                                         "wall_seconds": round(wall, 1)}, indent=2) + "\n")
    return summary


def _described(c: Figure1Config, train_images: int) -> dict:
    """What was run, for figure1.json."""
    return {"net": "conv1 32@5x5 -> act -> maxpool 3/2 -> conv2 32@5x5 -> act -> maxpool 3/2 -> conv3 64@5x5 "
                   "-> act -> maxpool 3/2 -> fc4 10 (89,578 parameters)",
            "setup": c.setup, "init": SETUPS[c.setup]["init"] + "; identical initial weights for both activations",
            "inputs": SETUPS[c.setup]["inputs"],
            "optimizer": "SGD momentum 0.9, no weight decay, fixed learning rate",
            "regularisation": "none (no dropout, no weight decay, no augmentation, no LRN)",
            "batch_size": c.batch_size, "threshold": THRESHOLD, "thresholds": list(THRESHOLDS),
            "train_images": train_images, "limit": c.limit, "seeds": list(c.seeds), "epochs": c.epochs,
            "lr_grid": c.grid, "lr_given": dict(c.chosen),
            "sweep_epochs": c.sweep_epochs, "sweep_rule": "lowest training error over the last sweep epoch, first seed",
            "train_error": "misclassified fraction over the epoch's training batches, at x = epochs done",
            "interpolation": f"linear between epoch points, epoch 0 taken as {CHANCE} (chance)",
            "ratio": "mean tanh epochs / mean ReLU epochs over the seeds"}
