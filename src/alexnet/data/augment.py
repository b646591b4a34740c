"""Batch augmentation on uint8 images (N, 3, H, W), run on whatever device the batch is on.

Each function is pure and does one thing; a training pipeline is these calls in order:

    x = random_crop(x, size, padding, generator)   # uint8
    x = flip_lr(x, generator)                      # uint8
    x = normalize(x, mean, std)                    # float, channels_last

Random numbers come from an explicit ``torch.Generator`` on the CPU, so a seed gives the
same crops and flips on every device.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_crop(images: torch.Tensor, size: int, padding: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` window of each image after zero-padding by ``padding`` pixels."""
    if padding:
        images = F.pad(images, (padding,) * 4)
    n, _, h, w = images.shape
    if (h, w) == (size, size):
        return images
    dy = torch.randint(0, h - size + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, w - size + 1, (n,), generator=generator).to(images.device)
    return crop_at(images, dy, dx, size)


def crop_at(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int) -> torch.Tensor:
    """Crop image i at row dy[i], column dx[i] (one gather for the whole batch)."""
    span = torch.arange(size, device=images.device)
    rows = (dy[:, None] + span)[:, None, :, None]
    cols = (dx[:, None] + span)[:, None, None, :]
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channel, rows, cols]


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top:top + size, left:left + size]


def flip_lr(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p (section 4.1's horizontal reflections)."""
    flip = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def normalize(images: torch.Tensor, mean, std, channels_last: bool = True) -> torch.Tensor:
    """uint8 0..255 -> float32 (x / 255 - mean) / std; mean and std per channel on the 0..1 scale."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    inv_std = 1.0 / (torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255)
    out = (images.float() - mean_t) * inv_std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()
