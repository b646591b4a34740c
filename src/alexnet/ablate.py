"""`alexnet ablate`: re-measure the paper's design claims (LRN, pooling, dropout, ...) over seeds (placeholder: being written)."""

from __future__ import annotations

from .errors import UsageError


def add_parser(commands) -> None:
    commands.add_parser("ablate", help="re-measure the paper's design claims (LRN, pooling, dropout, ...) over seeds")


def run(args) -> int:
    raise UsageError("not implemented yet")
