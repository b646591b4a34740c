"""What the tests share: the local data mirror and index-encoded images (one place, not one per file)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
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


TINY_CLASSES = [{"index": i, "wnid": f"n{i}", "name": name} for i, name in enumerate(("cat", "dog", "fish"))]


def tiny_checkpoint(path, seed=0):
    """A 3-class quarter-width paper network with an ImageNet-style pipeline (a mean image). He
    init and unit-scale inputs, so that different images get clearly different probabilities."""
    from alexnet import AlexNet, ModelConfig, save_checkpoint
    from alexnet.data.pipeline import Pipeline

    torch.manual_seed(seed)
    model = AlexNet(ModelConfig(variant="paper", num_classes=3, width=0.25, init="kaiming")).eval()
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.full((3, 256, 256), 115.0), mean_kind="image",
                        std=torch.full((3, 1, 1), 60.0))
    return save_checkpoint(path, model, classes=TINY_CLASSES, pipeline=pipeline.state_dict())


def chromium() -> str:
    """Debian's headless Chromium: skipped where it is missing, unless ALEXNET_REQUIRE_CHROMIUM=1 (.ci/run)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("ALEXNET_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed but ALEXNET_REQUIRE_CHROMIUM=1 (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def headless(tmp_path, *args, window: str = "1200,1600") -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile and no background networking (the machine is offline)."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={window}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
