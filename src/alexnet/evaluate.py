"""Top-1 and top-5 error, counting every example exactly once."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .data.augment import normalize
from .runtime import autocast


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device: torch.device,
             mean, std, precision: str = "fp32", channels_last: bool = True, flip: bool = False) -> dict:
    """Error rates of ``model`` on uint8 ``images``; ``flip`` averages each image's softmax with its mirror's."""
    was_training = model.training
    model.eval()
    top1 = top5 = 0
    loss_sum = 0.0
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True), mean, std, channels_last)
        y = labels[start:start + batch_size].to(device)
        probs = predict_probs(model, x, device, precision, flip)
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
        top1_hit, top5_hit = topk_hits(probs, y)
        top1, top5 = top1 + top1_hit, top5 + top5_hit
    model.train(was_training)
    n = len(labels)
    return {"val_top1_err": 1 - top1 / n, "val_top5_err": 1 - top5 / n, "val_loss": loss_sum / n, "examples": n}


def predict_probs(model, x: torch.Tensor, device: torch.device, precision: str, flip: bool) -> torch.Tensor:
    with autocast(device, precision):
        probs = model(x).float().softmax(1)
        if flip:
            probs = (probs + model(x.flip(-1)).float().softmax(1)) / 2
    return probs


def topk_hits(probs: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many labels are the top class, and how many are among the top five."""
    k = min(5, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(1).sum())
