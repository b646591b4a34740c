"""What several commands' parsers share."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..data import views

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
