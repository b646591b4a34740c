"""``alexnet ablate``: re-measure the paper's design claims on CIFAR-10, one switch at a time, over seeds."""

from __future__ import annotations

import json
from pathlib import Path

from .. import config as cfgmod
from ..errors import UsageError
from ..paper.ablate import REGIMES, STUDIES, ablate, budget_overrides, select_arms
from .common import add_parser as _parser
from .common import out_folder

EXAMPLES = """examples:
  alexnet ablate --study lrn                          # baseline + no-LRN, 3 seeds, the recipe's budget
  alexnet ablate --study all --seeds 3 --epochs 4 --limit 25000 --out runs/ablate
  alexnet ablate --study pca,towers --epochs 2 data.batch_size=256   # key=value applies to every arm
  alexnet ablate --regime overfit --out runs/ablate-overfit   # dropout, augment, pca where the net overfits

Prints one JSON line with the paths of ablation.md, ablation.json and ablation.png and the minutes.
Runs that finished (summary.json) are reused: re-run the same command to finish a stopped ablation.
"""

MAX_SEEDS = 100  # seeds per arm at most: a typo's huge count would build a config per run first


def add_parser(commands) -> None:
    p = _parser(commands, "ablate", "re-measure the paper's design claims (LRN, pooling, dropout, ...) over seeds",
                EXAMPLES, "Train the recipe with one switch changed per arm, over seeds, and compare validation error "
                          "with a shared baseline and the paper's claims.")
    p.add_argument("--study", help=f"one of {', '.join(STUDIES)}, or several comma-separated "
                                   "(default: all; with --regime overfit dropout,augment,pca,pca_fb)")
    p.add_argument("--regime", choices=list(REGIMES), default="short",
                   help="short: dropout 0.25, the recipe's budget (default); overfit: 5,000 training images, "
                        "30 epochs, dropout 0.5 (both: no frozen layers or low-resolution phase; docs/paper.md)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per arm (default 3)")
    p.add_argument("--epochs", type=int, help="training budget per run: optim.epochs (default: the recipe's)")
    p.add_argument("--limit", type=int, help="data.limit: a class-balanced subset of N images per split "
                                             "(default: the recipe's)")
    p.add_argument("--recipe", default="cifar10", help="recipe name or .toml file (default cifar10)")
    p.add_argument("--data", help="dataset location (data.path)")
    p.add_argument("--out", type=Path, default=Path("runs/ablate"), help="output folder (default runs/ablate)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every arm")
    p.set_defaults(run=run)


def run(args) -> int:
    out_folder("--out", args.out)
    regime, default_study = REGIMES[args.regime]
    arms = select_arms(args.study or default_study)
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise UsageError(f"--seeds must be at least 1 and at most {MAX_SEEDS} (each trains every arm once); "
                         f"got {args.seeds}")
    budget = [*regime, *budget_overrides(args.epochs, args.limit)]
    recipe = cfgmod.read_recipe(args.recipe)
    result = ablate(recipe, arms, list(range(args.seeds)), budget, list(args.overrides), args.out, args.data,
                    args.regime)
    print(json.dumps(result))
    return 0
