"""``alexnet predict``: the most probable classes of image files."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..runtime import log
from .common import add_parser as _parser
from .common import add_run_options, add_views, per_file

EXAMPLES = """examples:
  alexnet predict --checkpoint runs/demo/checkpoints/best.pt cat.jpg dog.png
  alexnet predict --checkpoint best.pt photos/ --json > predictions.jsonl   # every image under photos/
  alexnet predict --checkpoint best.pt photos/ --crops 10 --topk 3

Any file Pillow opens (the format is read from the bytes, EXIF orientation applied, CMYK, grayscale
and transparent images become RGB); folders are searched recursively for image files, in sorted
order. Each image goes through the checkpoint's own preprocessing. One line per image on stdout
(--json: one JSON object per line, {"file", "top": [{"index", "wnid", "name", "prob"}]} or
{"file", "error"}); a file that cannot be read gets a line on stderr and the others go on.
Exit status 1 when any file failed, 0 when all were predicted, 2 for bad usage.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "predict", "the most probable classes of image files", EXAMPLES)
    p.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|DIR", help="image files and folders of them")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (default 5)")
    add_views(p, 1, "default 1")
    add_run_options(p, "image")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.images import image_files, read_batches
    from ..use.predictor import load_predictor

    if args.topk < 1:
        raise UsageError(f"--topk must be at least 1; got {args.topk}")
    files, folders = image_files(args.inputs)
    predictor = load_predictor(args.checkpoint, args.device, args.batch_size, len(files) * args.crops, args.precision)
    if why := predictor.refusal(args.crops):
        raise UsageError(f"--crops {args.crops} for {args.checkpoint}: {why}")
    batches = read_batches(files, predictor.pipeline, args.batch_size, progress="predict" if folders else None,
                           ahead=predictor.decode_ahead())
    failed = 0
    for path, error, top in per_file(batches, lambda batch: tops(predictor, batch.images, args.crops, args.topk),
                                     "predict"):
        failed += bool(error)
        record = {"file": str(path), "error": error} if error else {"file": str(path), "top": top}
        if args.json:
            print(json.dumps(record), flush=True)
        elif not error:
            print(f"{path}  " + ", ".join(f"{t['name']} {t['prob']:.3f}" for t in top), flush=True)
    if failed:
        log(f"alexnet predict: {failed} of {len(files)} files could not be read")
    return 1 if failed else 0


def tops(predictor, images, views: int, k: int) -> list[list[dict]]:
    """The ``k`` most probable classes of each image, averaged over ``views`` views."""
    return predictor.top(predictor.probabilities(images, views), k)
