"""A heat map drawn over its photo, with the class and its probability written on it (PNG)."""

from __future__ import annotations

import io

import numpy as np
import torch

MAX_SIDE = 1600  # an overlay's longer side at most (a 12-megapixel photo's PNG would take seconds and 20 MB)


def overlay(photo: torch.Tensor, heat: torch.Tensor, label: str, max_side: int = MAX_SIDE):
    """uint8 ``photo`` (3, any size) with float (H, W) ``heat`` over it (the jet colours of the map scaled to
    its maximum, blended in at 20% where it is 0 and 65% at its maximum) and ``label`` on a band at the top: a
    PIL image of the map's aspect and size, its longer side at most ``max_side`` (the photo is resized to it)."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = heat.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = Image.fromarray(photo.permute(1, 2, 0).numpy()).resize(size, Image.Resampling.BILINEAR)
    heat_image = Image.fromarray(_normalised(heat).numpy()).resize(size, Image.Resampling.BILINEAR)
    m = np.asarray(heat_image, dtype=np.float32)[..., None]
    colours = colormaps["jet"](m[..., 0])[..., :3] * 255
    alpha = 0.2 + 0.45 * m  # a light wash of the map's colours everywhere, strongest where it is high
    blended = np.asarray(image, dtype=np.float32) * (1 - alpha) + colours * alpha
    out = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
    if label:
        _label(out, label)
    return out


def _normalised(heat: torch.Tensor) -> torch.Tensor:
    """The map scaled to 0 ... 1 by its maximum (float32; all 0 where it has no positive value)."""
    top = float(heat.max()) if heat.numel() else 0.0
    return (heat.clamp_min(0) / top if top > 0 else torch.zeros_like(heat)).float()


def _label(image, text: str) -> None:
    from PIL import ImageDraw, ImageFont

    size = max(10, image.height // 24)
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle((0, 0, box[2] + 2 * pad, box[3] + 2 * pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 255), font=font)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
