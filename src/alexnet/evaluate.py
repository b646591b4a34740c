"""Top-1 and top-5 error, counting every example exactly once.

``evaluate`` is the validation pass of training: one model, per-channel normalisation, the
image as stored (optionally averaged with its mirror). ``evaluate_views`` is the paper's test
protocol (section 4.1 and Table 2): the softmax averaged over the centre crop or the ten
patches of each image, and over the models of an ensemble ("5 CNNs").
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch.nn import functional as F

from .data.augment import center_crop, normalize, subtract_mean_image, ten_crop
from .runtime import all_sum, autocast

CROPS = (1, 2, 10)  # centre | centre and its mirror | four corners, centre and their mirrors


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device: torch.device,
             mean, std, precision: str = "fp32", channels_last: bool = True, flip: bool = False) -> dict:
    """Error rates of ``model`` on uint8 ``images``; ``flip`` averages each image's softmax with its mirror's."""
    return evaluate_views([model], images, labels, batch_size=batch_size, device=device, crops=2 if flip else 1,
                          prepare=per_channel(mean, std, channels_last), precision=precision)


@torch.no_grad()
def evaluate_views(models, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device: torch.device,
                   crops: int = 1, size: int | None = None, prepare: Callable[[torch.Tensor], torch.Tensor],
                   precision: str = "fp32") -> dict:
    """Error rates of the softmax averaged over ``crops`` views of each image and over ``models``.

    ``models`` is one network or a list (an ensemble: the mean of their softmaxes). ``images`` are
    uint8 (N, 3, H, W) at stored size (256x256 for ImageNet); ``views(x, crops, size)`` cuts each
    batch (``size=None``: the whole stored image) on uint8 and ``prepare`` turns the views into
    the float input on ``device``: ``per_channel(mean, std)`` (CIFAR-10) or
    ``mean_image_subtraction(mean_image, crops, size)`` (ImageNet), or any callable. Each step
    takes ``batch_size`` images, so a forward pass sees ``batch_size * crops`` views. The loss is
    the negative log of the averaged probability of the true class. Under torchrun each process
    takes every world-th example and the counts are summed: every example counts exactly once.
    """
    models = [models] if isinstance(models, torch.nn.Module) else list(models)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    top1 = top5 = 0
    loss_sum = 0.0
    mine = my_share(len(labels))
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        x = prepare(views(images[idx].to(device, non_blocking=True), crops, size))
        y = labels[idx].to(device)
        probs = ensemble_probs(models, x, len(y), device, precision)
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
        top1_hit, top5_hit = topk_hits(probs, y)
        top1, top5 = top1 + top1_hit, top5 + top5_hit
    for m, mode in zip(models, was_training):
        m.train(mode)
    top1, top5, loss_sum, n = all_sum([top1, top5, loss_sum, len(mine)], device)
    return {"val_top1_err": 1 - top1 / n, "val_top5_err": 1 - top5 / n, "val_loss": loss_sum / n, "examples": int(n)}


def my_share(n: int) -> torch.Tensor:
    """The examples this process evaluates: every world-th from its rank, so each counts once, unpadded."""
    if dist.is_available() and dist.is_initialized():
        return torch.arange(dist.get_rank(), n, dist.get_world_size())
    return torch.arange(n)


def views(images: torch.Tensor, crops: int, size: int | None) -> torch.Tensor:
    """The test views of each image, image-major: (N, C, H, W) -> (N * crops, C, size, size).

    ``crops=1`` the centre window, ``2`` the centre and its mirror, ``10`` ``ten_crop`` (four
    corners, centre, then the same five mirrored). ``size=None`` keeps the whole image (not
    with ``crops=10``, whose corners need a smaller window).
    """
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS}; got {crops}")
    h, w = images.shape[-2:]
    if size is not None and (size > h or size > w):
        raise ValueError(f"crop size {size} is larger than the {h}x{w} images")
    if crops == 10:
        if size is None:
            raise ValueError("crops=10 needs a crop size smaller than the images (the paper: 224 of 256)")
        return ten_crop(images, size)
    centre = images if size is None else center_crop(images, size)
    if crops == 1:
        return centre
    return torch.stack([centre, centre.flip(-1)], dim=1).flatten(0, 1)


def ensemble_probs(models: Sequence[torch.nn.Module], x: torch.Tensor, n: int, device: torch.device,
                   precision: str) -> torch.Tensor:
    """Softmax of each model on the ``n * k`` views ``x``, averaged over each image's k views and the models."""
    total = None
    with autocast(device, precision):
        for model in models:
            probs = model(x).float().softmax(1)
            probs = probs.view(n, -1, probs.shape[1]).mean(1)
            total = probs if total is None else total + probs
    return total / len(models)


def per_channel(mean, std, channels_last: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """``prepare`` for per-channel normalisation (CIFAR-10): ``normalize(views, mean, std)``."""
    return lambda x: normalize(x, mean, std, channels_last)


def mean_image_subtraction(mean_image: torch.Tensor, crops: int, size: int | None,
                           channels_last: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """``prepare`` for the paper's per-pixel mean (ImageNet): each view minus the same window of
    ``mean_image`` (float (3, H, W), 0..255), cut by ``views`` exactly as the images were."""
    mean_views = views(mean_image[None].float(), crops, size)  # (crops, 3, size, size)
    on_device: dict = {}

    def prepare(x: torch.Tensor) -> torch.Tensor:
        if x.device not in on_device:
            on_device[x.device] = mean_views.to(x.device)
        k = len(mean_views)
        mean = on_device[x.device].expand(len(x) // k, *mean_views.shape).flatten(0, 1)
        return subtract_mean_image(x, mean, channels_last)

    return prepare


def eval_inputs(data, config, crops: int):
    """(images, crop size, prepare) for evaluating ``data`` as the run ``config`` trained on it.

    CIFAR-10: the whole 32x32 image (ten crops come from the image padded as in training) and
    per-channel normalisation. Prepared ImageNet: ``input_size`` crops of the stored 256x256
    images minus the same windows of the training set's mean image.
    """
    size = config.model.input_size
    if data.stats is not None:
        return data.val_images, size, mean_image_subtraction(data.stats["mean_image"], crops, size,
                                                              config.train.channels_last)
    images, padding = data.val_images, config.data.crop_padding if crops == 10 else 0
    if padding:
        images = F.pad(images, (padding,) * 4)
    return images, size if crops == 10 else None, per_channel(config.data.mean, config.data.std,
                                                              config.train.channels_last)


def topk_hits(probs: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many labels are the top class, and how many are among the top five."""
    k = min(5, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(1).sum())
