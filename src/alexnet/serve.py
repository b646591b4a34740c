"""`alexnet serve`: (being written; see the issue)."""

from __future__ import annotations

from .errors import UsageError


def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="(not available yet)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise UsageError("alexnet serve is not available yet")
