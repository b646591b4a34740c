"""What several commands' parsers share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..data import views
from ..errors import UsageError

FORMATTER = argparse.RawDescriptionHelpFormatter


def add_parser(commands, name: str, help: str, examples: str, description: str | None = None):
    """A sub-command's parser with its one-line help, its description and its examples as the epilog."""
    return commands.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".",
                               epilog=examples, formatter_class=FORMATTER)


def add_views(p, default: int | None, also: str = "") -> None:
    """``--crops``: views per image, one of ``data.views.COUNTS``."""
    p.add_argument("--crops", type=int, choices=views.COUNTS, default=default, metavar="|".join(map(str, views.COUNTS)),
                   help=views.HELP + (f" ({also})" if also else ""))


def add_run_options(p, each: str) -> None:
    """--json (one object per ``each``), --batch-size and --device: the commands that run a network on image files."""
    p.add_argument("--json", action="store_true", help=f"one JSON object per {each} per line (JSON Lines)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="images decoded and run at once (default 64)")
    p.add_argument("--device", default="auto", help="auto (default: the GPU if there is one), cpu, cuda or cuda:N")
    add_precision(p)


def add_precision(p) -> None:
    """``--precision``: how the network computes (``use/inference.py``)."""
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto (default): bf16 where the device computes it natively, else fp32")


def per_file(batches: Iterable, outputs: Callable, command: str) -> Iterator[tuple[Path, str | None, object]]:
    """``(path, error, output)`` for every file of ``batches`` (``data.images.read_batches``), in order:
    ``outputs(batch)`` gives one output per readable image of a batch; a file that could not be read
    has its error instead, also said on stderr as ``alexnet COMMAND: PATH: ERROR``."""
    for batch in batches:
        results = iter(outputs(batch))
        for path, error in zip(batch.files, batch.errors):
            if error:
                batch.say(f"alexnet {command}: {path}: {error}")
            yield path, error, None if error else next(results)


def at_least(**limits: tuple[float | None, float] | tuple[float | None, float, float]) -> None:
    """``at_least(topk=(args.topk, 1))``: every option given is at least its low (None: left out, its default),
    and at most its high where one follows, else the first that is not is refused in one line, before anything
    is read or written."""
    for name, (value, low, *high) in limits.items():
        if value is not None and not low <= value <= (high[0] if high else math.inf):
            most = f" and at most {high[0]}" if high else ""
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least {low}{most}")


def out_folder(option: str, path: Path | None) -> None:
    """An output folder (made if missing) must not be a file."""
    if path is not None and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give a folder (it is made if missing), e.g. "
                         f"{option} {path.with_suffix('')}-out")


def out_file(option: str, path: Path, example: str, source: Path | None = None,
             suffixes: tuple[str, ...] = ()) -> None:
    """An output file must not be a folder, lie under a file, be the ``source`` it is made from, or end in a
    suffix of another kind of file (``suffixes``: the ones it may end in, of those ``OTHER_SUFFIXES`` names)."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file to write, e.g. {option} {path / example}")
    if under := next((p for p in path.parents if p.exists() and not p.is_dir()), None):
        raise UsageError(f"{option} {path}: {under} is a file, not a folder; give a path in a folder, e.g. "
                         f"{option} {under.parent / example}")
    if source is not None and path.exists() and path.resolve() == source.resolve():
        raise UsageError(f"{option} {path} is the file it is made from; give another file, e.g. "
                         f"{option} {path.parent / example}")
    if suffixes and path.suffix.lower() in OTHER_SUFFIXES and path.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: a {path.suffix} name for this file would mislead the commands that read "
                         f"it; give a {' or '.join(suffixes)} name, e.g. {option} {path.with_suffix(suffixes[0])}")


# Names that say what a file is: an output of another kind must not take them (``out_file``).
OTHER_SUFFIXES = {".pt", ".pth", ".onnx", ".safetensors", ".json", ".toml", ".npy", ".caffemodel", ".jpg", ".jpeg",
                  ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
