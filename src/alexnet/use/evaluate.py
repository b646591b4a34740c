"""Top-1 and top-5 error, counting every example exactly once.

``evaluate_views`` is both the validation pass of training and the paper's test protocol
(section 4.1 and Table 2): the softmax averaged over the views of each image (``data/views.py``:
the centre crop, it and its mirror, two scales, or the ten patches) and over the models of an
ensemble ("5 CNNs"). Which views and which normalisation is the run's ``Pipeline.eval_inputs``.
``mean_softmax`` is that average for one batch: ``alexnet predict`` and ``serve`` use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from ..runtime import Dist, all_sum, autocast, unwrap


@torch.no_grad()
def evaluate_views(models, images, labels: torch.Tensor, *, batch_size: int, device: torch.device, views: int,
                   inputs: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], precision: str = "fp32",
                   ddp: Dist = Dist()) -> dict:
    """Error rates of the softmax averaged over ``views`` views of each image and over ``models``.

    ``models`` is one network or a list (an ensemble: the mean of their softmaxes). ``images`` are
    uint8 (N, 3, H, W) at stored size (a tensor or prepared shards); ``inputs`` turns a batch of
    them on ``device`` into batches of float views, ``views`` per image in all (``Pipeline.eval_inputs``).
    Each step takes ``batch_size`` images, so the forward passes see ``batch_size * views`` views. The
    loss is the negative log of the averaged probability of the true class; ``top_class_share`` is
    the fraction of examples predicted as the most predicted class (1.0: one class for all). Under
    torchrun (``ddp``) each process takes every world-th example and the counts are summed: every
    example counts exactly once.
    """
    models = [models] if isinstance(models, torch.nn.Module) else list(models)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    top1 = top5 = 0
    loss_sum = 0.0
    # the counts' length: the same on every process, even one without examples
    fc8 = getattr(unwrap(models[0]), "fc8", None)
    predicted = torch.zeros(fc8.out_features, dtype=torch.float64) if fc8 is not None else None
    mine = torch.arange(ddp.rank, len(labels), ddp.world)  # every world-th from this rank: no padding
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        y = labels[idx].to(device)
        if start and len(idx) < batch_size:  # the ragged last batch, topped up with its first image: the
            # network sees one batch shape, so compiled LRN kernels are not compiled again for it (12 s cold)
            idx = torch.cat([idx, idx[:1].expand(batch_size - len(idx))])
        x = inputs(images[idx].to(device, non_blocking=True))
        probs = mean_softmax(models, x, len(idx), device, precision)[:len(y)]
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
        top1_hit, top5_hit = topk_hits(probs, y)
        top1, top5 = top1 + top1_hit, top5 + top5_hit
        counts = torch.bincount(probs.argmax(1).cpu(), minlength=probs.shape[1]).double()
        predicted = counts if predicted is None else predicted + counts
    for m, mode in zip(models, was_training):
        m.train(mode)
    predicted = all_sum(predicted.tolist(), device) if predicted is not None else [0.0]
    top1, top5, loss_sum, n = all_sum([top1, top5, loss_sum, len(mine)], device)
    return {"val_top1_err": 1 - top1 / n, "val_top5_err": 1 - top5 / n, "val_loss": loss_sum / n, "examples": int(n),
            "top_class_share": max(predicted) / n}


def mean_softmax(models: Sequence[torch.nn.Module], batches: tuple[torch.Tensor, ...], n: int,
                 device: torch.device, precision: str) -> torch.Tensor:
    """The softmax of each model on the views of each of ``n`` images, averaged over each image's views and
    over the models: (n, classes). ``batches`` hold the views image-major, one forward pass each
    (``Pipeline.eval_inputs``: 4 views of a network whose window is its whole image are its 2 distinct ones)."""
    views = sum(len(batch) for batch in batches) // n
    total = None
    with autocast(device, precision):
        for model in models:
            for batch in batches:
                probs = model(batch).float().softmax(1)
                probs = probs.view(n, -1, probs.shape[1]).sum(1)
                total = probs if total is None else total + probs
    return total / (len(models) * views)


def topk_hits(probs: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many labels are the top class, and how many are among the top five."""
    k = min(5, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(1).sum())
