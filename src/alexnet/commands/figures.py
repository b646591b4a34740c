"""``alexnet figures``: the paper's Figures 3 and 4 from a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_parser as _parser

EXAMPLES = """examples:
  alexnet figures --checkpoint runs/demo/checkpoints/best.pt          # into runs/demo/figures
  alexnet figures --checkpoint best.pt --images photos/ --gallery more_photos/ --out figs
  alexnet figures --checkpoint best.pt --gallery-limit 20000            # search more training images

Without --images the first validation image of each of eight classes is shown; with
it, the first eight image files (sorted), whose true class is known when the file or its folder
names a class (cat/1.png, cat_1.png, n01440764_tench.JPEG). Without --gallery the neighbours come
from a seeded class-balanced subset of the training split. Writes figure3.png,
figure4_top5.png, figure4_neighbours.png and figures.json; prints one JSON line.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "figures", "the paper's Figures 3 and 4 from a checkpoint", EXAMPLES)
    p.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="folder of image files for Figure 4 (default: validation images)")
    p.add_argument("--gallery", type=Path, metavar="DIR",
                   help="folder of image files searched for neighbours (default: the training split)")
    p.add_argument("--gallery-limit", type=int, default=5000, metavar="N",
                   help="at most N gallery images: a class-balanced subset of the training split, or the "
                        "first N files of --gallery (default 5000)")
    p.add_argument("--data", metavar="PATH", help="dataset location (default: the one in the checkpoint's config)")
    p.add_argument("--device", default="auto", help="auto (default: the GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (default: RUN_DIR/figures beside the checkpoints)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..paper.figures import make_all
    from ..runtime import pick_device

    paths = make_all(args.checkpoint, args.images, args.gallery, args.gallery_limit, args.data,
                     pick_device(args.device), args.out)
    print(json.dumps({key: str(path) for key, path in paths.items()}))
    return 0
