"""``alexnet retrieve``: the gallery images nearest each query image in fc7 (the paper's Figure 4, right)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from .common import add_parser as _parser
from .common import add_run_options, per_file

EXAMPLES = """examples:
  alexnet retrieve --checkpoint best.pt --gallery photos/ query.jpg          # the 6 nearest in photos/
  alexnet retrieve --checkpoint best.pt --gallery photos/ queries/ --k 10 --json

The gallery's fc7 features are computed once and cached in photos/.alexnet-features-<key>.safetensors
(or under $ALEXNET_DATA/retrieve when the folder is read-only); later runs recompute only new and
changed files, and everything for another checkpoint. One block per query on stdout (--json: one
object per line, {"query", "neighbours": [{"file", "distance"}]}); exit 1 when a query could not be
read, 2 for bad usage.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "retrieve", "gallery images nearest each query in fc7 (Figure 4, right)", EXAMPLES)
    p.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT")
    p.add_argument("--gallery", required=True, type=Path, metavar="DIR", help="folder of images searched (recursively)")
    p.add_argument("queries", nargs="+", type=Path, metavar="QUERY", help="image files and folders of them")
    p.add_argument("--k", type=int, default=6, help="neighbours per query (default 6, the paper's)")
    add_run_options(p, "query")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.images import image_files, read_batches
    from ..use.predictor import load_predictor
    from ..use.retrieve import gallery_features, nearest_neighbours, query_features

    if args.k < 1:
        raise UsageError(f"--k must be at least 1; got {args.k}")
    if not args.gallery.is_dir():
        raise UsageError(f"--gallery {args.gallery}: no such folder; give a folder of image files")
    files, _ = image_files(args.queries)
    gallery_size = sum(1 for _ in args.gallery.rglob("*"))  # an upper bound on its images: the work to set up for
    predictor = load_predictor(args.checkpoint, args.device, args.batch_size, gallery_size + len(files), args.precision)
    gallery = gallery_features(predictor, args.gallery)
    if not gallery.files:
        raise UsageError(f"--gallery {args.gallery}: none of its image files could be read")
    failed = 0
    batches = read_batches(files, predictor.pipeline, args.batch_size)
    for path, error, feature in per_file(batches, lambda batch: query_features(predictor, batch, gallery), "retrieve"):
        failed += bool(error)
        if error:
            record = {"query": str(path), "error": error}
        else:
            index, dist = nearest_neighbours(feature[None], gallery.features, args.k)
            record = {"query": str(path), "neighbours": [{"file": str(gallery.files[g]), "distance": d}
                                                         for g, d in zip(index[0].tolist(), dist[0].tolist())]}
        print_record(record, args.json)
    return 1 if failed else 0


def print_record(record: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
    elif "neighbours" in record:
        print(record["query"] + "".join(f"\n  {n['distance']:10.4f}  {n['file']}" for n in record["neighbours"]),
              flush=True)
