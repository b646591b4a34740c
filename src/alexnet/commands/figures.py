"""``alexnet figures``: the paper's Figures 3 and 4 from a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_parser as _parser
from .common import out_folder

EXAMPLES = """examples:
  alexnet figures --checkpoint runs/demo/checkpoints/best.pt          # into runs/demo/figures
  alexnet figures --checkpoint best.pt --images photos/ --gallery more_photos/ --out figs
  alexnet figures --checkpoint best.pt --gallery-limit 20000            # search more training images
  alexnet figures --checkpoint best.pt --units conv1,conv3,conv5        # and what their units see

Without --images the first validation image of each of eight classes is shown; with
it, the first eight image files (sorted), whose true class is known when the file or its folder
names a class (cat/1.png, cat_1.png, n01440764_tench.JPEG). Without --gallery the neighbours come
from a seeded class-balanced subset of the training split. Writes figure3.png,
figure4_top5.png, figure4_neighbours.png, figure4_gradcam.png (where the network finds each image's
top class) and figures.json; with --units also figure_units.png (Zeiler & Fergus's Figure 2: the 9
gallery patches that excite each of 6 units of the layers named most); prints one JSON line.
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
    p.add_argument("--units", default="", metavar="LAYERS",
                   help="also what units see: for 6 units of each of these conv layers (e.g. conv1,conv3,conv5, or "
                        "all), the 9 gallery patches that excite them most (figure_units.png)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (default: RUN_DIR/figures beside the checkpoints)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..paper.figures import make_all
    from ..runtime import pick_device

    out_folder("--out", args.out)
    paths = make_all(args.checkpoint, args.images, args.gallery, args.gallery_limit, args.data,
                     pick_device(args.device), args.out, unit_layers(args.units))
    print(json.dumps({key: str(path) for key, path in paths.items()}))
    return 0


def unit_layers(text: str) -> tuple[str, ...]:
    """``--units``: conv layers, in the network's order, or refused in one line."""
    from ..errors import UsageError
    from ..nn.fields import CONVS

    names = CONVS if text.strip() == "all" else tuple(n.strip() for n in text.split(",") if n.strip())
    if bad := [n for n in names if n not in CONVS]:
        raise UsageError(f"--units {text}: {bad[0]} is not a conv layer; give some of {','.join(CONVS)} or all")
    return tuple(n for n in CONVS if n in names)
