"""`alexnet report`: one HTML page (and markdown) for a run folder (placeholder: being written)."""

from __future__ import annotations

from .errors import UsageError


def add_parser(commands) -> None:
    commands.add_parser("report", help="one HTML page (and markdown) for a run folder")


def run(args) -> int:
    raise UsageError("not implemented yet")
