"""`alexnet retrieve`: (being written; see the issue)."""

from __future__ import annotations

from .errors import UsageError


def add_parser(commands) -> None:
    p = commands.add_parser("retrieve", help="(not available yet)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise UsageError("alexnet retrieve is not available yet")
