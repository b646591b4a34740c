"""``data.limit``: a seeded, class-balanced subset of a split (CIFAR-10, prepared shards, figure galleries)."""

from __future__ import annotations

import torch

from ..errors import UsageError


def balanced_indices(labels: torch.Tensor, num_classes: int, n: int, seed: int) -> torch.Tensor:
    """``n`` indices into ``labels``: ``n // num_classes`` of each class plus one for the first
    ``n % num_classes`` classes (a class that has too few gives its shortfall to the next ones),
    drawn and then ordered by a generator seeded with ``seed``. All indices when ``n >= len(labels)``."""
    if n < 0:
        raise UsageError(f"subset size must not be negative, got {n}")
    if n >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(labels, stable=True)  # indices grouped by class, ascending within each
    counts = torch.bincount(labels, minlength=num_classes)
    by_class = order.split(counts.tolist())
    quotas = class_quotas(n, counts.tolist())
    picked = [ix[torch.randperm(len(ix), generator=generator)[:q]] for ix, q in zip(by_class, quotas)]
    return torch.cat(picked)[torch.randperm(n, generator=generator)]


def class_quotas(n: int, available: list[int]) -> list[int]:
    """Per-class counts summing to ``n``: ``n // k`` each plus one for the first ``n % k``,
    capped by what each class has, with any shortfall taken from later classes in order."""
    k = len(available)
    quotas = [min(n // k + (c < n % k), have) for c, have in enumerate(available)]
    short = n - sum(quotas)
    for c, have in enumerate(available):
        extra = min(short, have - quotas[c])
        quotas[c] += extra
        short -= extra
    return quotas
