"""What units see (Zeiler & Fergus 2014, Figure 2): for a few units of each convolutional layer, the 9
gallery image patches that excite it most.

A unit is one channel of a layer's map (after its ReLU and LRN: the ``conv1`` ... ``conv5`` taps); its
activation at a position answers to one patch of the input, its receptive field, found from the layers'
kernels, strides and paddings (``receptive_fields``). For each unit the gallery's images are ranked by
the unit's largest activation anywhere in them; the 9 best images (one patch each) are shown. The units
drawn are those whose 9th-best activation is largest: the units the gallery excites most reliably.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..nn.fields import receptive_fields
from .plotting import pyplot

PATCHES = 9  # per unit, as a 3x3 grid (Zeiler & Fergus's Figure 2)
UNITS = 6  # per layer


class Strongest:
    """Per unit of the layers ``layers``, the ``PATCHES`` images (and positions) where it is largest, kept
    while batches of network inputs go through ``model`` (its taps' forward hooks)."""

    def __init__(self, model, layers: tuple[str, ...]):
        self.layers, self.offset = layers, 0
        self.best: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # value, image, position
        self.width: dict[str, int] = {}  # each layer's map width (positions are flattened rows)
        self.hooks = [model.taps[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def seen(module, inputs, output):
            n, c = output.shape[:2]
            self.width[name] = output.shape[-1]
            value, position = output.detach().float().flatten(2).max(dim=2)  # (n, c) each
            image = (torch.arange(n) + self.offset)[:, None].expand(n, c)
            parts = [(value.cpu(), image, position.cpu())]
            if name in self.best:
                parts.append(self.best[name])
            values, images, positions = (torch.cat([p[i].reshape(-1, c) for p in parts]) for i in range(3))
            top = values.topk(min(PATCHES, len(values)), dim=0).indices  # (k, c)
            self.best[name] = tuple(t.gather(0, top) for t in (values, images, positions))
        return seen

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


@torch.no_grad()
def strongest_patches(network, gallery, layers: tuple[str, ...]) -> dict[str, list[dict]]:
    """For each layer, ``UNITS`` units: ``{"unit", "activations", "images" (gallery positions), "boxes"}``."""
    fields, side = receptive_fields(network.model), network.pipeline.eval_side()
    strongest = Strongest(network.model, layers)
    try:
        for x in gallery.batches(network.batch_size):
            network.model.features(network.pipeline.eval_input(x.to(network.device)), layers[-1])
            strongest.offset += len(x)
    finally:
        strongest.close()
    out = {}
    for name in layers:
        values, images, positions = strongest.best[name]
        width = strongest.width[name]
        units = values[-1].topk(min(UNITS, values.shape[1])).indices.tolist()
        out[name] = [{"unit": u, "activations": [round(float(v), 4) for v in values[:, u]],
                      "images": images[:, u].tolist(),
                      "boxes": [fields[name].box(*divmod(int(p), width), side) for p in positions[:, u]]}
                     for u in units]
    return out


def patch_tiles(network, gallery, records: dict[str, list[dict]], tile: int = 48) -> dict[str, list]:
    """Each unit's patches (uint8 windows of what the network sees), resized to ``tile`` pixels, as 3x3 mosaics."""
    mosaics = {}
    for name, units in records.items():
        mosaics[name] = []
        for unit in units:
            windows = network.pipeline.window(gallery.pixels(unit["images"]).to(network.device)).cpu()
            tiles = [_tile(w, box, tile) for w, box in zip(windows, unit["boxes"])]
            tiles += [torch.full((3, tile, tile), 255, dtype=torch.uint8)] * (PATCHES - len(tiles))
            rows = [torch.cat(tiles[i:i + 3], dim=2) for i in range(0, PATCHES, 3)]
            mosaics[name].append(torch.cat(rows, dim=1).permute(1, 2, 0).numpy())
    return mosaics


def _tile(window: torch.Tensor, box: tuple[int, int, int, int], tile: int) -> torch.Tensor:
    """The ``box`` (top, left, bottom, right) of a uint8 (3, H, W) window, resized (nearest) to tile x tile."""
    from torch.nn import functional as F

    top, left, bottom, right = box
    patch = window[None, :, top:bottom, left:right].float()
    return F.interpolate(patch, size=(tile, tile), mode="nearest")[0].round().clamp(0, 255).to(torch.uint8)


def draw_units(mosaics: dict[str, list], records: dict[str, list[dict]], path: Path) -> None:
    """One row per layer, one 3x3 mosaic per unit."""
    plt = pyplot()
    layers, columns = list(mosaics), max(len(m) for m in mosaics.values())
    fig, axes = plt.subplots(len(layers), columns, squeeze=False, figsize=(1.7 * columns, 1.9 * len(layers) + 0.5))
    for row, name in enumerate(layers):
        for col in range(columns):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(mosaics[name]):
                ax.imshow(mosaics[name][col], interpolation="nearest")
                ax.set_title(f"{name} unit {records[name][col]['unit']}", fontsize=8)
    fig.suptitle("What units see: the 9 gallery patches that excite each unit most (Zeiler & Fergus, Figure 2)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
