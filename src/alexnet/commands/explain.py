"""``alexnet explain``: where the network looks for a class in image files (Grad-CAM or occlusion)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..runtime import log
from .common import add_parser as _parser
from .common import add_run_options

EXAMPLES = """examples:
  alexnet explain --checkpoint runs/demo/checkpoints/best.pt cat.jpg dog.png        # Grad-CAM, top class
  alexnet explain --checkpoint alexnet-tv.pt photos/ --method occlusion --out maps/ --json
  alexnet explain --checkpoint best.pt photo.jpg --class "tabby cat"                 # a class by name, wnid or index

For each image: OUT/NAME.METHOD.npy, a float32 array of the image's own height x width (after its EXIF
orientation), larger where the evidence for the class is stronger (0 where the network does not see the
photo: outside the centre square it is given), and OUT/NAME.METHOD.png, the photo with the map over it
and the class and its probability on it (longer side at most 1600 pixels). Files are read as predict
reads them. --json prints {"file", "class": {"index", "wnid", "name", "prob"}, "map", "overlay"} or
{"file", "error"} per image. gradcam: the last convolutional maps (conv5) weighted by the class score's
gradient; occlusion: a square of the mean colour (--window, --stride in input pixels) slid over the
input, the drop of the class probability. Exit status 1 when any file failed, 2 for bad usage.
"""


def add_parser(commands) -> None:
    from ..use.explain import METHODS

    p = _parser(commands, "explain", "heat maps of where the network finds a class in image files", EXAMPLES)
    p.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|DIR", help="image files and folders of them")
    p.add_argument("--method", choices=METHODS, default="gradcam", help="gradcam (default) or occlusion")
    p.add_argument("--class", dest="target", metavar="K",
                   help="the class to explain: an index, a wnid or a name (default: each image's top class)")
    p.add_argument("--out", type=Path, default=Path("explanations"), metavar="DIR",
                   help="where the maps and overlays go (default explanations/)")
    p.add_argument("--window", type=int, default=0, metavar="PX",
                   help="occlusion: the square's side in input pixels (default: input side / 7, 32 of 224)")
    p.add_argument("--stride", type=int, default=0, metavar="PX", help="occlusion: its step (default: window / 2)")
    add_run_options(p, "image")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.images import image_files, read_photo
    from ..use.explain import Explainer
    from ..use.predictor import load_predictor

    predictor = load_predictor(args.checkpoint, args.device, args.batch_size)
    explainer = Explainer(predictor.model, predictor.pipeline, predictor.device, args.window, args.stride,
                          args.batch_size)
    try:
        explainer.occluder(predictor.pipeline.eval_side())
    except ValueError as err:
        raise UsageError(str(err)) from None
    target = class_index(args.target, predictor.classes) if args.target is not None else None
    files, _ = image_files(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    failed, names = 0, set()
    for path in files:
        photo = read_photo(path)
        if isinstance(photo, str):
            failed += 1
            log(f"alexnet explain: {path}: {photo}")
            record = {"file": str(path), "error": photo}
        else:
            record = {"file": str(path), **explain_one(explainer, predictor, photo, target, args,
                                                       _name(path, names))}
        if args.json:
            print(json.dumps(record), flush=True)
        elif "error" not in record:
            print(f"{path}  {record['class']['name']} {record['class']['prob']:.3f}  {record['overlay']}", flush=True)
    if failed:
        log(f"alexnet explain: {failed} of {len(files)} files could not be read")
    return 1 if failed else 0


def explain_one(explainer, predictor, photo, target: int | None, args, name: str) -> dict:
    """The map of one decoded photo, written as NAME.METHOD.npy and .png under ``args.out``: its record."""
    import numpy as np

    from ..use.explain import explain_photo
    from ..use.overlay import overlay

    found, heat = explain_photo(explainer, predictor.classes, photo, target, args.method)
    npy, png = (args.out / f"{name}.{args.method}.{suffix}" for suffix in ("npy", "png"))
    np.save(npy, heat.numpy().astype(np.float32))
    overlay(photo, heat, f"{found['name']} {found['prob']:.3f} ({args.method})").save(png)
    return {"class": found, "map": str(npy), "overlay": str(png)}


def class_index(given: str, classes: list[dict]) -> int:
    """``--class``: an output's index, wnid or name (``use.explain.find_class``), refused in one line when none."""
    from ..use.explain import find_class

    if (index := find_class(given, classes)) is not None:
        return index
    shown = ", ".join(c["name"] for c in classes[:5]) + (" ..." if len(classes) > 5 else "")
    raise UsageError(f"--class {given}: not an index below {len(classes)}, a wnid or a class name of this "
                     f"checkpoint ({shown})")


def _name(path: Path, taken: set[str]) -> str:
    """The file's stem, made unique among the maps written by this run (photos/a/x.jpg and photos/b/x.jpg)."""
    name, n = path.stem, 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}"
    taken.add(name)
    return name
