"""``alexnet explain``: where the network looks for a class in image files (Grad-CAM or occlusion)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..runtime import log
from .common import add_parser as _parser
from .common import at_least, out_folder

EXAMPLES = """examples:
  alexnet explain --checkpoint runs/demo/checkpoints/best.pt cat.jpg dog.png        # Grad-CAM, top class
  alexnet explain --checkpoint alexnet-tv.pt photos/ --method occlusion --out maps/ --json
  alexnet explain --checkpoint alexnet-tv.pt photo.jpg --class tabby                # a class by wnid, name or index

For each image: OUT/NAME.METHOD.npy, a float32 array of the image's own height x width (after its EXIF
orientation), larger where the evidence for the class is stronger (0 where the network does not see the
photo: outside the centre square it is given), and OUT/NAME.METHOD.png, the photo with the map over it
and the class and its probability on it (longer side at most 1600 pixels). Files are read as predict
reads them, and the class and probability are predict's; files under --out are not read. --json
prints {"file", "class": {"index", "wnid", "name", "prob"}, "map", "overlay"} or {"file", "error"}
per image; --class takes a wnid, then a name, then an index. gradcam: the last convolutional maps
(conv5) weighted by the class score's gradient; occlusion: a square of the mean colour (--window,
--stride in input pixels) slid over the input, the drop of the class probability. Exit status 1 when
any file failed, 2 for bad usage.
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
    p.add_argument("--json", action="store_true", help="one JSON object per image per line (JSON Lines)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="occlusion: occluded inputs per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto (default: the GPU if there is one), cpu, cuda or cuda:N")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.images import read_photo
    from ..use.explain import Explainer
    from ..use.predictor import load_predictor

    at_least(window=(args.window, 0), stride=(args.stride, 0), batch_size=(args.batch_size, 1))
    if args.method != "occlusion" and (args.window or args.stride):  # 0: the default
        given = f"--window {args.window}" if args.window else f"--stride {args.stride}"
        raise UsageError(f"{given} sets occlusion's square and does nothing with --method {args.method}; add "
                         "--method occlusion, or drop it")
    out_folder("--out", args.out)
    predictor = load_predictor(args.checkpoint, args.device, 1, work=1)  # a few photos: the eager LRN, no compiling
    try:
        explainer = Explainer(predictor.model, predictor.pipeline, predictor.device, args.window, args.stride,
                              args.batch_size)
        if args.method == "occlusion":
            explainer.occluder(predictor.pipeline.eval_side())
    except ValueError as err:
        raise UsageError(str(err)) from None
    target = class_index(args.target, predictor.classes) if args.target is not None else None
    files = inputs(args.inputs, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    failed, names = 0, set()
    for path in files:
        read = read_photo(path, predictor.pipeline)
        if isinstance(read, str):
            failed += 1
            log(f"alexnet explain: {path}: {read}")
            record = {"file": str(path), "error": read}
        else:
            record = {"file": str(path), **explain_one(explainer, predictor, *read, target, args, _name(path, names))}
        if args.json:
            print(json.dumps(record), flush=True)
        elif "error" not in record:
            print(f"{path}  {record['class']['name']} {record['class']['prob']:.3f}  {record['overlay']}", flush=True)
    if failed:
        log(f"alexnet explain: {failed} of {len(files)} files could not be read")
    return 1 if failed else 0


def inputs(given: list[Path], out: Path) -> list[Path]:
    """The image files named and under the folders named, less those under ``out`` (this command's maps and
    overlays of an earlier run are not photos to explain)."""
    from ..data.images import image_files

    files, _ = image_files(given)
    where = out.resolve()
    kept = [f for f in files if where not in f.resolve().parents]
    if not kept:
        raise UsageError(f"no image files to explain outside --out {out}; give photos outside the output folder")
    return kept


def explain_one(explainer, predictor, stored, photo, target: int | None, args, name: str) -> dict:
    """The map of one photo (``stored``: what ``predict`` makes of it; ``photo``: the whole decoded photo),
    written as NAME.METHOD.npy and .png under ``args.out``: its record. The class and its probability are
    ``predict``'s."""
    import numpy as np

    from ..use.explain import class_map, on_photo
    from ..use.overlay import overlay

    probs = predictor.probabilities(stored[None])[0]
    k = int(probs.argmax()) if target is None else target
    found = predictor.record(k, probs[k])
    heat = on_photo(class_map(explainer, stored, k, args.method), predictor.pipeline, *photo.shape[1:])
    npy, png = (args.out / f"{name}.{args.method}.{suffix}" for suffix in ("npy", "png"))
    np.save(npy, heat.numpy())
    overlay(photo, heat, f"{found['name']} {found['prob']:.3f} ({args.method})").save(png)
    return {"class": found, "map": str(npy), "overlay": str(png)}


def class_index(given: str, classes: list[dict]) -> int:
    """``--class``: ``use.explain.find_class``, refused in one line when it names no class of this checkpoint."""
    from ..use.explain import find_class

    try:
        return find_class(given, classes)
    except ValueError as err:
        raise UsageError(f"--class {given}: {err}") from None


def _name(path: Path, taken: set[str]) -> str:
    """The file's stem, made unique among the maps written by this run (photos/a/x.jpg and photos/b/x.jpg)."""
    name, n = path.stem, 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}"
    taken.add(name)
    return name
