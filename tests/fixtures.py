"""What the tests share: the local data mirror and index-encoded images (one place, not one per file)."""

import os
from pathlib import Path

import torch

# The read-only data folder beside the checkout (../shared/data), or $ALEXNET_MIRROR.
MIRROR = Path(os.environ.get("ALEXNET_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "data"))
TARBALL = MIRROR / "cifar10-jpeg.tar.gz"  # CIFAR-10 as JPEGs: train/<class>/, test/<class>/
SAMPLES = MIRROR / "imagenet-samples"  # 900 real ILSVRC-2012 JPEGs, <wnid>_<name>.JPEG


def index_images(n: int = 6, size: int = 8) -> torch.Tensor:
    """uint8 (n, 3, size, size): image i has (row * size + col) in channel 0, i in channel 1 and 7 in
    channel 2, so every crop, flip and reordering can be read back from the pixels."""
    imgs = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    imgs[:, 0] = torch.arange(size * size).view(size, size)
    imgs[:, 1] = torch.arange(n).view(n, 1, 1)
    imgs[:, 2] = 7
    return imgs
