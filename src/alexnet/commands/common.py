"""What several commands' parsers share."""

from __future__ import annotations

import argparse
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


def at_least(**limits: tuple[float | None, float]) -> None:
    """``at_least(topk=(args.topk, 1))``: every option given is at least its low (None: left out, its default),
    else the first that is not is refused in one line, before anything is read or written."""
    for name, (value, low) in limits.items():
        if value is not None and not value >= low:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least {low}")


def out_folder(option: str, path: Path | None) -> None:
    """An output folder (made if missing) must not be a file."""
    if path is not None and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give a folder (it is made if missing), e.g. "
                         f"{option} {path.with_suffix('')}-out")


def out_file(option: str, path: Path, example: str) -> None:
    """An output file must not be a folder."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file to write, e.g. {option} {path / example}")
