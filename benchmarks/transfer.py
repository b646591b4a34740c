"""Transfer to new classes with few photos: fine-tune and linear probe against training from scratch.

    .venv/bin/python benchmarks/transfer.py [--pretrain-epochs 10] [--pretrain-limit 10000] [--per-class 40]
                                            [--val-per-class 200] [--out runs/bench-transfer] [KEY=VALUE ...]

From the shared CIFAR-10 photos (``--tarball``: real, if small, photos of ten classes, prepared at
256x256 like any user's folder), the paper's network is trained at 224 with ``--recipe imagenet`` on
the first five classes (``--pretrain-limit`` images, ``--pretrain-epochs``; or ``--pretrained CKPT``
to reuse one), then moved to the five other classes with ``--per-class`` training photos each and
``--val-per-class`` validation photos, three ways on the same photos: ``alexnet train --init`` with
the ``finetune`` recipe, with the ``probe`` recipe (fc8 alone on cached fc7 features), and the same
network from scratch (``--recipe imagenet``) for as many epochs as the fine-tune. Each is a run
folder under ``--out``; a finished one is reused. Prints one JSON line: per way the validation top-1
error, the seconds (the whole command) and the seconds of training per epoch; and the points of
top-1 error each transfer gains over scratch. ``KEY=VALUE`` arguments go to every run (e.g.
``model.width=0.125`` for a quick look; the numbers are then not the benchmark's).
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

from alexnet.runs.folder import RunFolder

# in the shared data folder: ALEXNET_MIRROR where it is set (as make does), else ../shared/data beside the clone
TARBALL = Path(os.environ.get("ALEXNET_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data") / \
    "cifar10-jpeg.tar.gz"
OLD = ("airplane", "automobile", "bird", "cat", "deer")  # the classes the network is trained on first
NEW = ("dog", "frog", "horse", "ship", "truck")  # the classes it is moved to


def folders(tarball: Path, out: Path, per_class: int, val_per_class: int) -> tuple[Path, Path]:
    """``out/old`` (every photo of OLD, train and test as val) and ``out/new`` (a seeded ``per_class`` and
    ``val_per_class`` of each of NEW), ImageFolders extracted once from ``tarball``."""
    old, new = out / "old", out / "new"
    if (new / "val").is_dir():
        return old, new
    rng, chosen = random.Random(0), {}
    with tarfile.open(tarball) as archive:
        members = [m for m in archive if m.isfile() and len(m.name.split("/")) == 4]
        for m in members:
            _, split, name, _ = m.name.split("/")
            chosen.setdefault((split, name), []).append(m)
        for (split, name), items in sorted(chosen.items()):
            items.sort(key=lambda m: m.name)
            rng.shuffle(items)
            keep = items if name in OLD else items[:per_class if split == "train" else val_per_class]
            root = old if name in OLD else new if name in NEW else None
            for m in keep if root is not None else ():
                path = root / ("train" if split == "train" else "val") / name / Path(m.name).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.extractfile(m).read())
    return old, new


def train(out: Path, data: Path, *args: str) -> dict:
    """``alexnet train`` into ``out`` on ``data`` in its own process (or the finished run there): its
    summary, the whole command's seconds and the seconds of training per epoch."""
    folder = RunFolder(out)
    if not folder.finished():
        start = time.perf_counter()
        command = [sys.executable, "-m", "alexnet.cli", "train", "--out", str(out), "--data", str(data), *args,
                   "train.progress=false"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        (out / "wall.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))
    rows, summary = folder.metrics(), folder.summary()
    batch = tomllib.loads(folder.config.read_text())["data"]["batch_size"]
    trained = summary["step"] // summary["epochs"] * batch  # rows trained on per epoch (images, or cached rows)
    return {"val_top1_err": summary["val_top1_err"], "epochs": summary["epochs"],
            "seconds": round(json.loads((out / "wall.json").read_text())["seconds"], 1),
            "train_seconds_per_epoch": float(f"{statistics.median(trained / r['images_per_s'] for r in rows):.3g}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tarball", type=Path, default=TARBALL)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-transfer"))
    parser.add_argument("--pretrained", type=Path, help="a network trained on the old classes (default: train one)")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--pretrain-limit", type=int, default=10_000, help="training images of the old classes")
    parser.add_argument("--per-class", type=int, default=40, help="training photos per new class")
    parser.add_argument("--val-per-class", type=int, default=200, help="validation photos per new class")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args()
    old, new = folders(args.tarball, args.out / "data", args.per_class, args.val_per_class)
    init = args.pretrained or args.out / "pretrain" / "checkpoints" / "best.pt"
    if args.pretrained is None:
        limit = args.pretrain_limit
        train(args.out / "pretrain", old, "--recipe", "imagenet", f"optim.epochs={args.pretrain_epochs}",
              f"data.limit={limit}", f"data.val_limit={limit // 5}", *args.overrides)
    result = {"finetune": train(args.out / "finetune", new, "--init", str(init), *args.overrides),
              "probe": train(args.out / "probe", new, "--init", str(init), "--recipe", "probe", *args.overrides)}
    epochs = result["finetune"]["epochs"]
    result["scratch"] = train(args.out / "scratch", new, "--recipe", "imagenet", f"optim.epochs={epochs}",
                              "data.batch_size=32", "train.eval_crops=2", "train.eval_every=3", *args.overrides)
    for way in ("finetune", "probe"):
        result[f"{way}_points_better_than_scratch"] = round(
            100 * (result["scratch"]["val_top1_err"] - result[way]["val_top1_err"]), 1)
    print(json.dumps({"per_class": args.per_class, "val_per_class": args.val_per_class, "init": str(init),
                      "overrides": args.overrides, **result}))


if __name__ == "__main__":
    main()
