"""`alexnet figures`: the paper's Figures 3 and 4 from a checkpoint (placeholder: being written)."""

from __future__ import annotations

from .errors import UsageError


def add_parser(commands) -> None:
    commands.add_parser("figures", help="the paper's Figures 3 and 4 from a checkpoint")


def run(args) -> int:
    raise UsageError("not implemented yet")
