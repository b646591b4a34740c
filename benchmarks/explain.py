"""Do the heat maps rank the evidence? Deletion on CIFAR-10 test photos, and seconds per image at 224.

    .venv/bin/python benchmarks/explain.py [--checkpoint runs/demo/checkpoints/last.pt] [--images 1000]
                                           [--shares 0.1,0.25,0.5] [--paper-images 4] [--figure PNG]

For each method (Grad-CAM, occlusion) and share s of the pixels, the mean drop of the true class's
probability over ``--images`` CIFAR-10 test photos (class-balanced, seeded; those the network gets right)
when the pixels are set to the mean colour: the s its map ranks highest, the s it ranks lowest, random
squares of the occluder's side covering s, and random single pixels covering s. The baseline is measured
in the same run: a map that ranks evidence well hides more of the class with its top pixels than random
squares of the same area do. Then the seconds per image of each method for the paper's network at 224
(untrained weights: the time does not depend on them) on this CPU. ``--figure``: the maps over real
photos of the shared ImageNet samples whose class is one of CIFAR-10's, as one PNG. Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from alexnet import AlexNet, ModelConfig
from alexnet.data.cifar.load import load_cifar10
from alexnet.data.pipeline import Pipeline
from alexnet.data.subset import balanced_indices
from alexnet.runs.load import load_run
from alexnet.runtime import configure_process
from alexnet.use.explain import METHODS, Explainer, random_squares, ranked_hiding

# the shared data folder: ALEXNET_MIRROR where it is set (as make does), else ../shared/data beside the clone
SHARED = Path(os.environ.get("ALEXNET_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def deletion(explainer: Explainer, x: torch.Tensor, labels: torch.Tensor, shares: list[float], batch: int,
             methods: tuple[str, ...] = METHODS) -> dict:
    """Per method and share: the mean probability drop when hiding top, lowest, random squares, random pixels."""
    g = torch.Generator().manual_seed(0)
    full = _prob(explainer, x, labels, batch)
    window, _ = explainer.occluder(x.shape[-1])
    out = {}
    for method in methods:
        start = time.perf_counter()
        maps = torch.cat([explainer.maps(x[i:i + batch], labels[i:i + batch], method) for i in range(0, len(x), batch)])
        print(f"{method}: {len(x)} maps in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        for share in shares:
            hidden = {"top": ranked_hiding(x, maps, share), "lowest": ranked_hiding(x, maps, share, lowest=True),
                      "random_squares": random_squares(x, share, window, g),
                      "random_pixels": ranked_hiding(x, torch.rand(maps.shape, generator=g), share)}
            out[f"{method}@{share:g}"] = {k: round(float((full - _prob(explainer, v, labels, batch)).mean()), 4)
                                          for k, v in hidden.items()}
    return out


def _prob(explainer: Explainer, x: torch.Tensor, labels: torch.Tensor, batch: int) -> torch.Tensor:
    probs = torch.cat([explainer.probabilities(x[i:i + batch]) for i in range(0, len(x), batch)])
    return probs[torch.arange(len(labels)), labels]


def seconds_per_image(images: int, methods: tuple[str, ...] = METHODS) -> dict:
    """Each method's seconds per image for the paper's network at 224 (batch 64 occlusion positions)."""
    torch.manual_seed(0)
    model = AlexNet(ModelConfig(num_classes=1000)).eval()
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.full((3, 1, 1), 115.0), mean_kind="channel")
    e = Explainer(model, pipeline, torch.device("cpu"))
    x = e.input(torch.randint(0, 256, (images, 3, 256, 256), dtype=torch.uint8))
    out = {}
    for method in methods:
        e.maps(x[:1], torch.tensor([0]), method)  # warm-up
        start = time.perf_counter()
        for i in range(images):
            e.maps(x[i:i + 1], torch.tensor([0]), method)
        out[method] = round((time.perf_counter() - start) / images, 3)
    return out


def figure(run, path: Path, count: int = 8) -> None:
    """Grad-CAM and occlusion over real photos (the shared ImageNet samples of CIFAR-10's classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alexnet.data.images import read_photo
    from alexnet.use.explain import on_photo
    from alexnet.use.overlay import overlay

    names = ("n02123045_tabby", "n02099601_golden_retriever", "n01530575_brambling", "n02389026_sorrel",
             "n03095699_container_ship", "n02690373_airliner", "n04285008_sports_car", "n04467665_trailer_truck")
    files = [SHARED / "imagenet-samples" / f"{name}.JPEG" for name in names]  # one of each of 8 CIFAR-10 classes
    e = Explainer(run.model, run.pipeline, torch.device("cpu"))
    rows = []
    for f in files[:count]:
        read = read_photo(f, run.pipeline)
        if isinstance(read, str):  # the reason it cannot be read
            raise SystemExit(f"benchmarks/explain.py --figure: {f}: {read} (set ALEXNET_MIRROR to the shared data)")
        stored, photo = read
        x = e.input(stored[None])
        probs = e.probabilities(x)[0]
        k = int(probs.argmax())
        name = run.classes[k]["name"] if run.classes else str(k)
        rows.append([overlay(photo, on_photo(e.maps(x, torch.tensor([k]), m)[0], run.pipeline, *photo.shape[1:]),
                             f"{name} {float(probs[k]):.2f} ({m})", max_side=400) for m in ("gradcam", "occlusion")])
    fig, axes = plt.subplots(2, len(rows), figsize=(2.2 * len(rows), 4.6), squeeze=False)
    for j, pair in enumerate(rows):
        for i, image in enumerate(pair):
            axes[i, j].imshow(image)
            axes[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/demo/checkpoints/last.pt"))
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--data", help="CIFAR-10 (an archive or folder; default: the cache, ALEXNET_MIRROR, download)")
    p.add_argument("--shares", default="0.1,0.25,0.5")
    p.add_argument("--methods", default=",".join(METHODS), help="gradcam,occlusion (default both)")
    p.add_argument("--batch-size", type=int, default=8, help="images whose maps are made at once")
    p.add_argument("--paper-images", type=int, default=4)
    p.add_argument("--figure", type=Path)
    args = p.parse_args()
    configure_process()  # as a command: glibc keeps freed memory (occlusion's batches would fault it in again)
    torch.set_grad_enabled(False)
    run = load_run(args.checkpoint)
    _, test = load_cifar10(args.data, limit=None, seed=0, val_limit=None)
    chosen = balanced_indices(test.labels, 10, min(args.images * 2, len(test.labels)), seed=0)
    e = Explainer(run.model.eval(), run.pipeline, torch.device("cpu"), batch_size=512)
    x, labels = e.input(test.images[chosen]), test.labels[chosen]
    right = torch.cat([e.probabilities(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]) == labels
    first = torch.cat([torch.nonzero(right).flatten(), torch.nonzero(~right).flatten()])[:args.images]
    x, labels = x[first], labels[first]  # those it gets right (an untrained network: any)
    start = time.perf_counter()
    methods = tuple(args.methods.split(","))
    table = deletion(e, x, labels, [float(s) for s in args.shares.split(",")], args.batch_size, methods)
    seconds = round(time.perf_counter() - start, 1)
    paper = seconds_per_image(args.paper_images, methods) if args.paper_images else None
    result = {"checkpoint": str(args.checkpoint), "images": len(labels), "window": e.occluder(x.shape[-1]),
              "deletion": table, "seconds": seconds, "paper_224_seconds_per_image": paper}
    if args.figure:
        figure(run, args.figure)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
