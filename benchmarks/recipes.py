"""Do the ImageNet-path recipes learn on real photos? Both recipes on the same data, in the same run.

    .venv/bin/python benchmarks/recipes.py [--epochs 1] [--limit 10000] [--recipes imagenet,paper] [KEY=VALUE ...]

The data is the shared CIFAR-10 ImageFolder (``../shared/data/cifar10-jpeg.tar.gz``: real, if
small, photos of ten classes), extracted once into the cache and given to ``alexnet train`` as an
ImageFolder, so it is prepared at 256x256 as any user's folder would be. Each recipe trains the
paper's full network on a class-balanced ``--limit`` of the training images for ``--epochs`` and
is validated on as many test images. Prints one JSON line: per recipe the training loss at the end
of epoch 1 (``train_loss_end``, its last tenth of steps) as a ratio to ln(10), the loss of a
constant prediction, the epoch means and the validation errors. The goal:
``imagenet_epoch1_loss_vs_chance`` < 0.8 (the paper recipe, the baseline run beside it, sits at 1.0
or above on ten classes: see docs/paper-recipe.md). ``--figure`` draws the curves. On a 2-core CPU
an epoch of 10,000 images takes about 5 minutes per recipe.

``KEY=VALUE`` arguments (none by default) are passed on to every ``alexnet train`` after the
script's own, e.g. ``model.width=0.125 data.batch_size=8 data.eval_batch_size=8`` for a quick
smoke run (its numbers are then not the benchmark's; the JSON line lists the overrides).
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from alexnet.files import cache_root
from alexnet.runs.folder import RunFolder

# in the shared data folder: ALEXNET_MIRROR where it is set (as make does), else ../shared/data beside the clone
TARBALL = Path(os.environ.get("ALEXNET_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data") / \
    "cifar10-jpeg.tar.gz"
GOAL = 0.8


def image_folder(tarball: Path) -> Path:
    """The tarball's ImageFolder (cifar10/train, cifar10/test), extracted once into the cache: a folder
    named by the tarball's name, size and modification time (another tarball, or this one changed, is
    extracted anew, never mistaken for a stale extraction), made whole under a temporary name and then
    renamed into place (an interrupted extraction is never reused)."""
    stat = tarball.stat()
    key = hashlib.sha1(f"{tarball.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    root = cache_root() / "benchmarks" / f"{tarball.name.split('.')[0]}-{key}"
    if not root.is_dir():
        tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(tarball) as archive:
                archive.extractall(tmp, filter="data")
            try:
                tmp.rename(root)
            except OSError:
                if not root.is_dir():  # else another run extracted it meanwhile
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root / "cifar10"


def train(recipe: str, folder: Path, out: Path, epochs: int, limit: int, overrides: list[str]) -> dict:
    """One ``alexnet train`` run in its own process (``overrides`` appended); its metrics rows and summary."""
    command = [sys.executable, "-m", "alexnet.cli", "train", "--recipe", recipe, "--data", str(folder),
               "--out", str(out), f"data.limit={limit}", f"optim.epochs={epochs}", "train.progress=false", *overrides]
    subprocess.run(command, check=True)
    return finished(RunFolder(out))


def finished(folder: RunFolder) -> dict:
    """A finished run's metrics rows and summary."""
    return {"rows": folder.metrics(), "summary": folder.summary()}


def draw(result: dict, chance: float, path: Path) -> None:
    """Training loss and validation top-1 error per epoch for each recipe, ln(10) marked."""
    from alexnet.paper.plotting import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for recipe in ("paper", "imagenet"):
        if recipe in result:
            epochs = range(1, len(result[recipe]["losses"]) + 1)
            left.plot(epochs, result[recipe]["losses"], marker="o", label=f"--recipe {recipe}")
            right.plot(epochs, result[recipe]["val_top1_errs"], marker="o", label=f"--recipe {recipe}")
    left.axhline(chance, color="grey", linestyle="--", label="ln 10 (constant prediction)")
    left.axhline(GOAL * chance, color="grey", linestyle=":", label="0.8 ln 10")
    right.axhline(0.9, color="grey", linestyle="--", label="chance (0.9)")
    left.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss")
    right.set(xlabel="epoch", ylabel="top-1 error", title="validation top-1 error", ylim=(0, 1))
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.suptitle(f"CIFAR-10 photos prepared at 256, {result['limit']:,} training images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    path.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--recipes", default="imagenet,paper")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-recipes"))
    parser.add_argument("--tarball", type=Path, default=TARBALL)
    parser.add_argument("--figure", type=Path,
                        help="also draw each recipe's curves into this PNG (and the JSON beside it)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides passed on to every `alexnet train` (default none), "
                             "e.g. model.width=0.125 data.batch_size=8")
    args = parser.parse_args()
    folder, chance = image_folder(args.tarball), math.log(10)
    result = {"limit": args.limit, "epochs": args.epochs, "chance_loss": chance, "overrides": args.overrides}
    for recipe in args.recipes.split(","):
        out = args.out / recipe
        if RunFolder(out).summary_file.is_file():
            run = finished(RunFolder(out))
        else:
            run = train(recipe, folder, out, args.epochs, args.limit, args.overrides)
        first = run["rows"][0]
        result[recipe] = {"epoch1_loss": first["train_loss"], "epoch1_loss_end": first["train_loss_end"],
                          "epoch1_loss_end_vs_chance": first["train_loss_end"] / chance,
                          "val_top1_err": run["summary"]["val_top1_err"],
                          "val_top5_err": run["summary"]["val_top5_err"],
                          "train_seconds": run["summary"]["train_seconds"],
                          "losses": [round(r["train_loss"], 4) for r in run["rows"]],
                          "val_top1_errs": [r.get("val_top1_err") for r in run["rows"]]}
    if "imagenet" in result:
        ratio = result["imagenet_epoch1_loss_vs_chance"] = result["imagenet"]["epoch1_loss_end_vs_chance"]
        print(f"imagenet_epoch1_loss_vs_chance: {ratio:.3f} at the end of epoch 1 "
              f"(goal < {GOAL}: {'met' if ratio < GOAL else 'NOT met'})", file=sys.stderr)
    if args.figure:
        draw(result, chance, args.figure)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
