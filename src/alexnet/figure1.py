"""`alexnet figure1`: the paper's Figure 1: ReLU vs tanh training error on CIFAR-10 (placeholder: being written)."""

from __future__ import annotations

from .errors import UsageError


def add_parser(commands) -> None:
    commands.add_parser("figure1", help="the paper's Figure 1: ReLU vs tanh training error on CIFAR-10")


def run(args) -> int:
    raise UsageError("not implemented yet")
