"""`alexnet figure1`: the paper's Figure 1, ReLU against tanh training error on CIFAR-10.

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
  ``--sweep-epochs`` (default 2) epochs, the same grid and budget for both activations; the
  rate with the lowest training error over the last sweep epoch wins (ties: the smaller rate).
  The winner is then trained on from where its sweep run stopped: everything is seeded, so its
  curve is exactly the curve of a fresh run at that rate.
- Training error of an epoch: the fraction of misclassified examples over that epoch's
  training batches, as they were trained on (as the paper's plot), placed at x = epochs done.
- A run stops at ``--epochs-cap`` epochs, ``--after`` epochs after its error first fell to
  25%, or when the ``--minutes`` budget of the whole command would be overrun by another
  epoch. Epochs to 25% are fractional, linearly interpolated between the epoch points (an
  untrained net is taken as 0.9 error, chance for ten classes, at epoch 0); a run that never
  reaches 25% gives its last epoch as a lower bound (``*_lower_bound: true``), and then the
  ratio tanh/relu is a lower bound too.

Outputs in ``--out`` (default runs/figure1): ``figure1.png`` (the paper's style: training
error rate against epochs, ReLU solid, tanh dashed, a line at 0.25) and ``figure1.json`` (the
setup, the sweep, the curves, times). One JSON line on stdout sums it up.
"""

from __future__ import annotations

import argparse
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

from .errors import UsageError
from .runtime import log, worker_count

THRESHOLD = 0.25  # the paper's training error rate target
CHANCE = 0.9  # error of an untrained ten-class net: the curve's point at epoch 0
ACTIVATIONS = ("relu", "tanh")
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

EXAMPLES = """examples:
  alexnet figure1                                   # full CIFAR-10, about 20-28 minutes on 2 CPU cores
  alexnet figure1 --setup modern --out runs/figure1-modern   # LeCun init, standardised inputs
  alexnet figure1 --limit 2000 --epochs-cap 5 --sweep-epochs 1 --lrs 0.003,0.03   # a quick look

Prints one JSON line: relu_epochs_to_25pct, tanh_epochs_to_25pct, ratio (tanh / relu; a lower
bound when tanh_lower_bound is true), the chosen learning rates and the output paths.
"""


def add_parser(commands) -> None:
    p = commands.add_parser("figure1", help="the paper's Figure 1: ReLU vs tanh training error on CIFAR-10",
                            description="Train the same four-layer CNN with ReLU and with tanh units on CIFAR-10 "
                                        "(no regularisation, each with its best learning rate from a small sweep) "
                                        "and plot training error against epochs.",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/figure1"), help="output folder (default runs/figure1)")
    p.add_argument("--data", help="CIFAR-10 location (default: cache, $ALEXNET_MIRROR, download)")
    p.add_argument("--epochs-cap", type=int, default=40, help="most epochs per activation (default 40)")
    p.add_argument("--after", type=int, default=3, help="epochs to keep training after reaching 25%% (default 3)")
    p.add_argument("--minutes", type=float, default=28.0,
                   help="wall-clock budget of the whole command; a run stops early rather than overrun it (default 28)")
    p.add_argument("--setup", choices=list(SETUPS), default="paper",
                   help="paper: N(0, 0.01) init, mean-image-subtracted 0..255 inputs (default); "
                        "modern: LeCun init, standardised inputs")
    p.add_argument("--lrs", help="learning-rate grid, comma-separated, the same for both activations (default: "
                                 + "; ".join(f"{k} {','.join(map(str, v['lrs']))}" for k, v in SETUPS.items()) + ")")
    p.add_argument("--sweep-epochs", type=int, default=2, help="epochs per learning rate in the sweep (default 2)")
    p.add_argument("--batch-size", type=int, default=128, help="images per SGD step (default 128)")
    p.add_argument("--limit", type=int, default=0, help="train on a seeded class-balanced subset of N images (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the batch order (default 0)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: the cores this process may use)")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Figure1Config:
    """The experiment's settings (the command's options; module docstring for what they mean)."""

    setup: str = "paper"  # paper | modern (SETUPS)
    lrs: tuple[float, ...] = ()  # learning-rate grid for both activations; empty: the setup's
    epochs_cap: int = 40  # most epochs per activation
    sweep_epochs: int = 2  # epochs per learning rate in the sweep
    after: int = 3  # epochs to keep training after reaching 25%
    minutes: float = 28.0  # wall-clock budget of the whole experiment
    batch_size: int = 128  # images per SGD step
    limit: int = 0  # >0: a seeded class-balanced subset of this many training images
    seed: int = 0  # the init and the batch order
    threads: int = 0  # CPU threads; 0: the cores this process may use
    data: str | None = None  # CIFAR-10 location; None: cache, mirror, download

    def __post_init__(self):
        for name in ("epochs_cap", "sweep_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if self.after < 0 or self.limit < 0 or self.minutes <= 0:
            raise UsageError("--after and --limit must not be negative and --minutes must be positive")
        if self.sweep_epochs > self.epochs_cap:
            raise UsageError(f"--sweep-epochs {self.sweep_epochs} is more than --epochs-cap {self.epochs_cap}; lower it")
        if self.setup not in SETUPS:
            raise UsageError(f"--setup must be one of {', '.join(SETUPS)}; got {self.setup!r}")

    @property
    def grid(self) -> list[float]:
        return sorted(self.lrs or SETUPS[self.setup]["lrs"])


def run(args) -> int:
    config = Figure1Config(setup=args.setup, lrs=tuple(parse_lrs(args.lrs)) if args.lrs is not None else (),
                           epochs_cap=args.epochs_cap, sweep_epochs=args.sweep_epochs, after=args.after,
                           minutes=args.minutes, batch_size=args.batch_size, limit=args.limit, seed=args.seed,
                           threads=args.threads, data=args.data)
    print(json.dumps(figure1(config, args.out)))
    return 0


def parse_lrs(text: str) -> list[float]:
    try:
        lrs = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--lrs must be comma-separated numbers such as 0.01,0.03; got {text!r}") from None
    if not lrs or any(not lr > 0 for lr in lrs):
        raise UsageError(f"--lrs needs at least one positive learning rate; got {text!r}")
    return sorted(set(lrs))


def epochs_to_threshold(errors: list[float], threshold: float = THRESHOLD, start: float = CHANCE) -> tuple[float, bool]:
    """Fractional epochs until the training error first reaches ``threshold``, and whether it did.

    ``errors[k]`` is the error of epoch k + 1, placed at x = k + 1; the curve starts at
    (0, ``start``). The crossing is linearly interpolated between the two epoch points around it.
    A curve that never reaches the threshold gives (its last epoch, False): a lower bound.
    """
    points = [start, *errors]
    for k in range(1, len(points)):
        if points[k] <= threshold:
            before, after = points[k - 1], points[k]
            if before <= threshold:  # start already below: reached at once
                return float(k - 1), True
            return k - 1 + (before - threshold) / (before - after), True
    return float(len(errors)), False


def ratio_of(relu: tuple[float, bool], tanh: tuple[float, bool]) -> float | None:
    """tanh epochs / relu epochs; None when relu did not reach the threshold (no bound either way)."""
    if not relu[1] or relu[0] <= 0:
        return None
    return tanh[0] / relu[0]


class FourLayerNet(nn.Module):
    """The Figure 1 network (see the module docstring); ``activation`` is its only switch."""

    def __init__(self, activation: str, setup: str = "paper"):
        super().__init__()
        if activation not in ACTIVATIONS or setup not in SETUPS:
            raise ValueError(f"activation must be relu or tanh and setup paper or modern; got {activation!r}, {setup!r}")
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
        from .data.augment import normalize, subtract_mean_image
        from .data.pipeline import CIFAR10_MEAN, CIFAR10_STD

        if self.setup == "paper":
            return subtract_mean_image(images, self.mean_image, channels_last=True)
        return normalize(images, CIFAR10_MEAN, CIFAR10_STD, channels_last=True)


class Run:
    """One network at one learning rate: its model, optimiser and per-epoch curve."""

    def __init__(self, activation: str, lr: float, seed: int, inputs: Inputs):
        torch.manual_seed(seed)  # the same initial weights for every activation and rate
        self.activation, self.lr, self.seed, self.inputs = activation, lr, seed, inputs
        self.model = FourLayerNet(activation, inputs.setup).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
        self.errors: list[float] = []
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self.diverged = False

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

    def record(self) -> dict:
        return {"lr": self.lr, "train_error": [round(e, 5) for e in self.errors],
                "train_loss": [round(v, 5) if math.isfinite(v) else None for v in self.losses],
                "epoch_seconds": [round(s, 2) for s in self.seconds], "diverged": self.diverged}


def sweep(activation: str, lrs: list[float], epochs: int, images, labels, batch_size: int, seed: int,
          inputs: Inputs, log=print) -> tuple[Run, list[dict]]:
    """Train each rate for ``epochs``; return the best run (lowest last-epoch error) and all records."""
    runs = []
    for lr in lrs:
        run_ = Run(activation, lr, seed, inputs)
        for _ in range(epochs):
            run_.train_epoch(images, labels, batch_size)
            if run_.diverged:
                break
        log(f"figure1: sweep {activation} lr {lr:g}: training error {run_.errors[-1]:.4f}"
            f"{' (diverged)' if run_.diverged else ''} after {len(run_.errors)} epoch(s), {sum(run_.seconds):.0f}s")
        runs.append(run_)
    best = min(runs, key=lambda r: (math.inf if r.diverged else r.errors[-1], r.lr))
    return best, [r.record() for r in runs]


def train_on(run_: Run, images, labels, batch_size: int, cap: int, after: int, deadline: float, log=print) -> str:
    """Continue ``run_`` until the cap, ``after`` epochs past 25%, or the deadline; returns why it stopped."""
    while True:
        reached, done = epochs_to_threshold(run_.errors)[1], len(run_.errors)
        if reached and done >= math.ceil(epochs_to_threshold(run_.errors)[0]) + after:
            return "reached"
        if done >= cap:
            return "cap"
        if run_.diverged:
            return "diverged"
        if time.monotonic() + max(run_.seconds[-3:]) > deadline:
            return "time"
        error = run_.train_epoch(images, labels, batch_size)
        log(f"figure1: {run_.activation} lr {run_.lr:g} epoch {done + 1}: training error {error:.4f}  "
            f"loss {run_.losses[-1]:.4f}  {run_.seconds[-1]:.1f}s")


def figure1(config: Figure1Config, out: Path) -> dict:
    """Run the experiment into ``out``; return the summary (the JSON line)."""
    from .data.cifar import load_cifar10

    c = config
    started, deadline = time.monotonic(), time.monotonic() + c.minutes * 60
    threads = c.threads or worker_count()
    torch.set_num_threads(threads)
    train, _ = load_cifar10(c.data, limit=c.limit or None, seed=c.seed)
    lrs = c.grid
    inputs = Inputs(c.setup, train.images)
    if len(train) < c.batch_size:
        raise UsageError(f"--batch-size {c.batch_size} is larger than the {len(train)} training images; raise --limit")
    log(f"figure1: {len(train)} training images, {threads} threads, learning rates {lrs}, "
        f"{c.sweep_epochs} sweep epoch(s) each, cap {c.epochs_cap} epochs, budget {c.minutes:g} min")
    curves, sweeps = {}, {}
    for activation in ACTIVATIONS:
        best, sweeps[activation] = sweep(activation, list(lrs), c.sweep_epochs, train.images, train.labels,
                                         c.batch_size, c.seed, inputs, log)
        log(f"figure1: {activation}: learning rate {best.lr:g} chosen")
        stopped = train_on(best, train.images, train.labels, c.batch_size, c.epochs_cap, c.after, deadline, log)
        to25, reached = epochs_to_threshold(best.errors)
        curves[activation] = {**best.record(), "stopped": stopped, "epochs_to_25pct": round(to25, 3),
                              "reached_25pct": reached, "lr_at_grid_edge": best.lr in (min(lrs), max(lrs))}
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / "figure1.png", out / "figure1.json"
    plot(curves, png, c.setup)
    wall = time.monotonic() - started
    summary = _summary(curves, c.setup, wall, png, js)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
               "threads": threads, "torch_version": torch.__version__}
    js.write_text(json.dumps({"summary": summary, "setup": _described(c, len(train)), "sweep": sweeps,
                              "curves": curves, "machine": machine, "wall_seconds": round(wall, 1)},
                             indent=2) + "\n")
    return summary


def _summary(curves: dict, setup: str, wall: float, png: Path, js: Path) -> dict:
    """The command's JSON line: epochs to 25% for each activation and their ratio."""
    relu, tanh = curves["relu"], curves["tanh"]
    ratio = ratio_of((relu["epochs_to_25pct"], relu["reached_25pct"]), (tanh["epochs_to_25pct"], tanh["reached_25pct"]))
    return {"relu_epochs_to_25pct": relu["epochs_to_25pct"], "tanh_epochs_to_25pct": tanh["epochs_to_25pct"],
            "ratio": None if ratio is None else round(ratio, 2), "relu_lower_bound": not relu["reached_25pct"],
            "tanh_lower_bound": not tanh["reached_25pct"],
            "epochs_to_25pct": "fractional, linear interpolation between epoch points",
            "relu_lr": relu["lr"], "tanh_lr": tanh["lr"], "setup": setup,
            "minutes": round(wall / 60, 2), "png": str(png), "json": str(js)}


def _described(c: Figure1Config, train_images: int) -> dict:
    """What was run, for figure1.json."""
    return {"net": "conv1 32@5x5 -> act -> maxpool 3/2 -> conv2 32@5x5 -> act -> maxpool 3/2 -> conv3 64@5x5 "
                   "-> act -> maxpool 3/2 -> fc4 10 (89,578 parameters)",
            "setup": c.setup, "init": SETUPS[c.setup]["init"] + "; identical initial weights for both activations",
            "inputs": SETUPS[c.setup]["inputs"],
            "optimizer": "SGD momentum 0.9, no weight decay, fixed learning rate",
            "regularisation": "none (no dropout, no weight decay, no augmentation, no LRN)",
            "batch_size": c.batch_size, "threshold": THRESHOLD,
            "train_images": train_images, "limit": c.limit, "seed": c.seed, "lr_grid": c.grid,
            "sweep_epochs": c.sweep_epochs, "sweep_rule": "lowest training error over the last sweep epoch",
            "epochs_cap": c.epochs_cap, "after": c.after, "minutes_budget": c.minutes,
            "train_error": "misclassified fraction over the epoch's training batches, at x = epochs done",
            "interpolation": f"linear between epoch points, epoch 0 taken as {CHANCE} (chance)"}


def plot(curves: dict, path: Path, setup: str = "paper") -> None:
    """The paper's Figure 1 style: training error rate against epochs, ReLU solid, tanh dashed."""
    from .plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    styles = {"relu": ("-", "ReLU"), "tanh": ("--", "tanh")}
    for activation, curve in curves.items():
        line, name = styles[activation]
        epochs = range(1, len(curve["train_error"]) + 1)
        to25 = f"{curve['epochs_to_25pct']:.1f}" if curve["reached_25pct"] else f">{curve['epochs_to_25pct']:.0f}"
        ax.plot(epochs, curve["train_error"], line, color="black", lw=1.6,
                label=f"{name} (lr {curve['lr']:g}; 25% at {to25} epochs)")
    ax.axhline(THRESHOLD, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Training error rate")
    ax.set_ylim(0, 0.75)
    ax.set_xlim(0, max(len(c["train_error"]) for c in curves.values()) + 1)
    ax.set_title(f"Four-layer CNN on CIFAR-10: ReLU vs tanh ({setup} setup)", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
