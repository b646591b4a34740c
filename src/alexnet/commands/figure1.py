"""``alexnet figure1``: the paper's Figure 1, ReLU against tanh training error on CIFAR-10."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import UsageError
from ..paper.figure1 import SETUPS, Figure1Config, figure1
from ..paper.figure1_results import ACTIVATIONS
from ..runtime import MAX_THREADS, worker_count
from .common import add_parser as _parser
from .common import at_least, out_folder

EXAMPLES = """examples:
  alexnet figure1                                   # full CIFAR-10, 3 seeds x 2 nets x 40 epochs: 2-3 h on 2 CPU cores
  alexnet figure1 --lr relu=0.001,tanh=0.01         # skip the sweep: the paper setup's rates (docs/figure1.md)
  alexnet figure1 --seeds 1 --lr relu=0.001,tanh=0.01 --threads 1 &   # two processes, one core each,
  alexnet figure1 --seeds 2 --lr relu=0.001,tanh=0.01 --threads 1     # then --seeds 0,1,2 draws them all
  alexnet figure1 --setup modern --out runs/figure1-modern   # LeCun init, standardised inputs
  alexnet figure1 --limit 2000 --epochs 5 --sweep-epochs 1 --lrs 0.003,0.03 --seeds 0   # a quick look

Prints one JSON line: relu_epochs_to_25pct, tanh_epochs_to_25pct (means over the seeds), ratio
(tanh / relu; a lower bound when tanh_lower_bound is true), the chosen learning rates and the
output paths. A stopped run continues from its last epoch when the same command runs again.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "figure1", "the paper's Figure 1: ReLU vs tanh training error on CIFAR-10", EXAMPLES,
                "Train the same four-layer CNN with ReLU and with tanh units on CIFAR-10 (no regularisation, each "
                "with its best learning rate from a small sweep) over seeds, and plot training error against epochs.")
    p.add_argument("--out", type=Path, default=Path("runs/figure1"), help="output folder (default runs/figure1)")
    p.add_argument("--data", help="CIFAR-10 location (default: cache, $ALEXNET_MIRROR, download)")
    p.add_argument("--epochs", type=int, default=40, help="epochs of every curve (default 40)")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
    p.add_argument("--setup", choices=list(SETUPS), default="paper",
                   help="paper: N(0, 0.01) init, mean-image-subtracted 0..255 inputs (default); "
                        "modern: LeCun init, standardised inputs")
    p.add_argument("--lrs", help="learning-rate grid, comma-separated, the same for both activations (default: "
                                 + "; ".join(f"{k} {','.join(map(str, v['lrs']))}" for k, v in SETUPS.items()) + ")")
    p.add_argument("--lr", help="the rates to use instead of sweeping, e.g. relu=0.001,tanh=0.01 (one or both)")
    p.add_argument("--sweep-epochs", type=int, default=2, help="epochs per learning rate in the sweep (default 2)")
    p.add_argument("--batch-size", type=int, default=128, help="images per SGD step (default 128)")
    p.add_argument("--limit", type=int, default=0, help="train on a seeded class-balanced subset of N images (0: all)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: the cores this process may use)")
    p.set_defaults(run=run)


def run(args) -> int:
    at_least(threads=(args.threads, 0, MAX_THREADS))
    out_folder("--out", args.out)
    config = Figure1Config(setup=args.setup, lrs=tuple(parse_lrs(args.lrs)) if args.lrs is not None else (),
                           chosen=parse_chosen(args.lr) if args.lr else (), epochs=args.epochs,
                           sweep_epochs=args.sweep_epochs, batch_size=args.batch_size, limit=args.limit,
                           seeds=parse_seeds(args.seeds), threads=args.threads, data=args.data)
    torch.set_num_threads(config.threads or worker_count())  # the command's own process
    print(json.dumps(figure1(config, args.out)))
    return 0


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers such as 0,1,2; got {text!r}") from None


def parse_chosen(text: str) -> tuple[tuple[str, float], ...]:
    """``relu=0.001,tanh=0.01`` -> (("relu", 0.001), ("tanh", 0.01))."""
    pairs = []
    for part in filter(str.strip, text.split(",")):
        name, _, value = part.partition("=")
        try:
            lr = float(value)
        except ValueError:
            lr = -1.0
        if name.strip() not in ACTIVATIONS or not 0 < lr < math.inf:
            raise UsageError(f"--lr must be ACTIVATION=RATE pairs such as relu=0.001,tanh=0.01; got {text!r}")
        pairs.append((name.strip(), lr))
    return tuple(pairs)


def parse_lrs(text: str) -> list[float]:
    try:
        lrs = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--lrs must be comma-separated numbers such as 0.01,0.03; got {text!r}") from None
    if not lrs or any(not 0 < lr < math.inf for lr in lrs):
        raise UsageError(f"--lrs needs at least one positive learning rate, each finite; got {text!r}")
    return sorted(set(lrs))
