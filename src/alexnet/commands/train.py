"""``alexnet train``: train a network from a recipe, or continue a stopped run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .. import config as cfgmod
from ..errors import UsageError
from ..runs.folder import RunFolder
from ..runtime import env_int
from .common import add_parser as _parser
from .common import out_folder

EXAMPLES = """examples:
  alexnet train                                   # CIFAR-10 default recipe into runs/cifar10-<time>
  alexnet train --recipe cifar10 --out runs/demo optim.epochs=2 model.lrn=false
  alexnet train --recipe imagenet --data my_photos/ optim.epochs=30   # any ImageFolder: train/<class>/, val/<class>/
  alexnet train --recipe paper --data /data/imagenet-256 --out runs/paper   # the 2012 recipe on prepared ILSVRC-2012
  alexnet train --recipe my_recipe.toml seed=1 data.batch_size=64 train.precision=fp32
  alexnet train --out runs/demo --resume          # continue a stopped run
  alexnet train --init alexnet-tv.pt --data my_photos/ --out runs/mine   # fine-tune imported weights on a folder
  alexnet train --init runs/demo/checkpoints/best.pt --data my_photos/ --recipe probe   # a linear probe in seconds

recipes: cifar10 (the default main job), imagenet (the paper's network trained the modern way: learns
from the first epoch on any ImageNet-style set), paper (the 2012 recipe as published; with fewer than
about 50 classes it sits flat, see docs/recipes.md); with --init: finetune (the default) and probe (fc8
alone, on features computed once). fc8 gets as many outputs as the training data has classes; an explicit
model.num_classes that disagrees exits 2 before anything is written. An epoch that did not learn (loss at
ln(classes), or one class predicted for every image) prints a warning: line.

--init CKPT starts from any checkpoint (a run's, alexnet import output) or torchvision's AlexNet .pth: its
network and its input (size, resize, mean, std) are kept, fc8 is made anew for the data's classes, and
optim.trainable chooses what learns (all, fc8, fc6+, conv4+ ...). See docs/finetune.md.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "train", "train a network", EXAMPLES)
    p.add_argument("--recipe", help=f"recipe name ({', '.join(cfgmod.recipe_names())}) or a .toml file "
                                    "(default cifar10; with --init finetune)")
    p.add_argument("--data", help="dataset location (data.path)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--init", type=Path, metavar="CKPT", help="fine-tune: start from this checkpoint's network and "
                   "input (any alexnet checkpoint, or torchvision's AlexNet .pth)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.02")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..runs.load import load_run
    from ..train.loop import train

    out_folder("--out", args.out)
    resume = args.resume or _torchrun_restart(args)
    if args.init is not None and args.resume:
        raise UsageError("--init starts a new run from a checkpoint's weights and --resume continues a run in --out: "
                         "give one of them")
    init = None
    if resume:
        if args.out is None:
            raise UsageError("--resume needs --out RUN_DIR (the run folder to continue)")
        folder = RunFolder(args.out)
        if not folder.holds_run():
            raise UsageError(f"--resume: no checkpoint at {folder.last}; start without --resume")
        loaded = load_run(folder.last, args.overrides, args.data, keep_towers=True)  # read once: train restores from it
        config = loaded.config
    elif args.init is not None:
        from ..train.finetune import fine_tune_config
        from ..use.pretrained import load_init

        loaded, init = None, load_init(args.init)
        recipe = cfgmod.read_recipe("finetune" if args.recipe is None else args.recipe)  # '' is no recipe's name
        config = fine_tune_config(init, recipe, args.overrides, args.data)
    else:
        loaded = None
        recipe = cfgmod.read_recipe("cifar10" if args.recipe is None else args.recipe)
        config = cfgmod.build_config(recipe, args.overrides, args.data)
    out = args.out or Path("runs") / f"{config.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = train(config, out, resume=loaded, init=init)
    print(json.dumps(summary))
    return 0


def _torchrun_restart(args) -> bool:
    """Under torchrun, every process and every restart must use one run folder; a restart after a
    failure (``--max-restarts``) continues from its last checkpoint by itself."""
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return False
    if args.out is None:
        raise UsageError("under torchrun pass --out RUN_DIR, so that every process and every restart use the same "
                         "run folder")
    restarted = env_int("TORCHELASTIC_RESTART_COUNT") > 0
    return restarted and RunFolder(args.out).holds_run()
