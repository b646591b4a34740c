"""Receptive fields: which input pixels each position of a conv layer's map answers to.

Walking the stages from the input, each kernel of side k, stride s and padding p grows the field by
(k - 1) x the current jump between positions, moves the centre of position 0 by ((k - 1) / 2 - p) x
jump, and multiplies the jump by s. The units figure crops these boxes; Grad-CAM lays conv5's cells
at their centres when it brings its map to the input's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import STAGES

CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


@dataclass(frozen=True)
class Field:
    """A layer's receptive field in input pixels: ``size`` a side, ``jump`` between neighbouring positions,
    ``start`` the centre of position 0."""

    size: int
    jump: int
    start: float

    def box(self, y: int, x: int, side: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of position (y, x)'s field, clipped to a ``side`` x ``side`` input."""
        half = (self.size - 1) / 2
        top, left = self.start + y * self.jump - half, self.start + x * self.jump - half
        return (max(0, round(top)), max(0, round(left)), min(side, round(top) + self.size),
                min(side, round(left) + self.size))


def receptive_fields(model) -> dict[str, Field]:
    """Each conv layer's receptive field, walking the stages' kernels, strides and paddings from the input."""
    size, jump, start, out = 1, 1, 0.0, {}
    for name in STAGES[:STAGES.index("conv5") + 1]:
        layer = model.pool if name.startswith("pool") else getattr(model, name)
        k, s, p = (_first(getattr(layer, a)) for a in ("kernel_size", "stride", "padding"))
        size, start, jump = size + (k - 1) * jump, start + ((k - 1) / 2 - p) * jump, jump * s
        if name in CONVS:
            out[name] = Field(size, jump, start)
    return out


def _first(value) -> int:
    return int(value[0] if isinstance(value, tuple | list) else value)


def at_input(maps: torch.Tensor, field: Field, side: int) -> torch.Tensor:
    """(N, 1, h, w) maps of a layer's positions -> (N, 1, side, side) at the input's pixels: each pixel takes
    the bilinear value at its place among the positions' centres (``field``), the border's beyond them."""
    from torch.nn import functional as F

    h, w = maps.shape[-2:]
    pixel = torch.arange(side, dtype=torch.float32, device=maps.device)
    y, x = ((pixel - field.start) / field.jump / max(n - 1, 1) * 2 - 1 for n in (h, w))
    grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)[None].expand(len(maps), side, side, 2)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)
