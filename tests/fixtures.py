"""What the tests share: the local data mirror and index-encoded images (one place, not one per file)."""

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
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


def last_json(out: str) -> dict:
    """A command's result: the last line of what it printed, a JSON object."""
    return json.loads(out.strip().splitlines()[-1])


def json_lines(out: str) -> list[dict]:
    """What a command printed with --json: one JSON object per line."""
    return [json.loads(line) for line in out.splitlines()]


def refused(argv: str, capsys) -> str:
    """Run ``alexnet ARGV`` (split on spaces) in this process; it must exit 2 with one ``alexnet ...: error:``
    line on stderr and no traceback: that line."""
    from alexnet.cli import main

    try:
        code = main(argv.split())
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("alexnet"), err
    return errors[0]


def lrn_formula(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """Section 3.3 written as loops over channels (alpha divided by n, the cuda-convnet convention, and
    Caffe's, whose bvlc_alexnet uses k=1): the reference every LRN test checks against."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha / n * (a[:, lo:hi + 1] ** 2).sum(1)) ** beta
    return out


def encoded(image, fmt: str, **options) -> bytes:
    """``image`` saved as ``fmt`` (PIL's save options), as bytes."""
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def exif_rotated_jpeg(pixels, **options) -> bytes:
    """A JPEG of ``pixels`` (an (H, W, 3) uint8 array or a PIL image) as stored, with EXIF orientation 6:
    shown turned a quarter clockwise, as a phone stores a portrait shot."""
    from PIL import Image  # here, not at the top: conftest imports this module before anything else

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: "rotate 90 degrees clockwise to display"
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    return encoded(image, "JPEG", exif=exif, **options)


def tiny_training(*more: str, limit: int | None = 256, batch: int = 64, epochs: int = 1, width: float | None = 0.25,
                  eval_batch: int | None = None, data: Path | None = TARBALL) -> list[str]:
    """Overrides for a training run of seconds, the list every training test starts from: ``epochs`` of
    ``batch`` over the first ``limit`` images (None: all) of ``data`` (the CIFAR-10 mirror; None: the
    recipe's or --data's), validation in batches of ``eval_batch`` (default: the limit, one batch), the
    network at ``width`` (None: the recipe's or the init's), no progress bar; then ``more``, which win."""
    overrides = [f"optim.epochs={epochs}", f"data.batch_size={batch}", "train.progress=false"]
    overrides += [f"data.limit={limit}"] if limit is not None else []
    overrides += [f"data.eval_batch_size={eval_batch or limit}"] if eval_batch or limit else []
    overrides += [f"model.width={width}"] if width is not None else []
    overrides += [f"data.path={json.dumps(str(data))}"] if data is not None else []
    return [*overrides, *more]


TINY_CLASSES = [{"index": i, "wnid": f"n{i}", "name": name} for i, name in enumerate(("cat", "dog", "fish"))]


def tiny_checkpoint(path, seed=0, width=0.25, mean=115.0, config=None, classes=TINY_CLASSES, init="kaiming"):
    """A paper network for ``classes`` (cat, dog, fish unless told; a quarter of the width) with an
    ImageNet-style pipeline (a mean image of ``mean``). He init (``init``) and unit-scale inputs, so that
    different images get clearly different probabilities. ``config``: a run config to store with it."""
    from alexnet import AlexNet, ModelConfig, save_checkpoint
    from alexnet.data.pipeline import Pipeline

    torch.manual_seed(seed)
    model = AlexNet(ModelConfig(variant="paper", num_classes=len(classes), width=width, init=init)).eval()
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.full((3, 256, 256), mean), mean_kind="image",
                        std=torch.full((3, 1, 1), 60.0))
    return save_checkpoint(path, model, config, classes=classes, pipeline=pipeline.state_dict())


def recipe_checkpoint(path, recipe="cifar10", overrides=(), pipeline=None, seed=0):
    """An untrained checkpoint of a recipe's network (random but fixed weights) with its resolved config,
    as a run of ``alexnet train --recipe RECIPE OVERRIDES`` would store it; ``pipeline``: a stored input
    pipeline's state (none: the one the config implies)."""
    from alexnet import AlexNet, save_checkpoint
    from alexnet.config import build_config, read_recipe, to_dict

    config = build_config(read_recipe(recipe), list(overrides))
    torch.manual_seed(seed)
    stored = {} if pipeline is None else {"pipeline": pipeline}
    return save_checkpoint(path, AlexNet(config.model).eval(), to_dict(config), **stored)


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


# ------------------------------------------------------------------------------ a Caffe model file

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
KERNELS, HIDDEN, CLASSES = (12, 32, 48, 48, 32), 512, 10  # the paper's net at width 0.125
CONV4, INNER_PRODUCT = 4, 14  # caffe.proto's V1LayerParameter.LayerType values
BGR_MEAN = (104.007, 116.669, 122.679)


def caffe_blobs(seed=0):
    """Layer -> (weight, bias) in Caffe's layout: conv2/4/5 grouped in two, conv1 on BGR, fc6 on 64x6x6."""
    rng = np.random.default_rng(seed)
    c1, c2, c3, c4, c5 = KERNELS
    shapes = {"conv1": (c1, 3, 11, 11), "conv2": (c2, c1 // 2, 5, 5), "conv3": (c3, c2, 3, 3),
              "conv4": (c4, c3 // 2, 3, 3), "conv5": (c5, c4 // 2, 3, 3), "fc6": (HIDDEN, c5 * 36),
              "fc7": (HIDDEN, HIDDEN), "fc8": (CLASSES, HIDDEN)}
    blobs = {}
    for name, shape in shapes.items():
        fan_in = np.prod(shape[1:])
        scale = np.sqrt(2 / fan_in) * (0.02 if name == "fc8" else 1)  # fc8: logits of a few units, no saturation
        weight = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        blobs[name] = (weight, rng.standard_normal(shape[0], dtype=np.float32) * np.float32(0.1))
    return blobs


def write_caffemodel(path, blobs, layout="v1", legacy=True, shape_of=None):
    """A NetParameter in the V1 (``layers``) or new (``layer``) layout, with the layers that have no
    blobs in between; ``legacy``: 4-d num/channels/height/width blobs (fc 1x1xOxI, bias 1x1x1xN)."""
    from alexnet.use.pretrained import caffe_messages

    m = caffe_messages()
    net = m["NetParameter"](name="AlexNet")
    add = net.layers.add if layout == "v1" else net.layer.add
    for name in ("data", *[n for layer in LAYERS for n in (layer, f"relu{layer[-1]}")], "prob"):
        layer = add(name=name)
        if name not in blobs:
            continue
        kind = CONV4 if name.startswith("conv") else INNER_PRODUCT
        layer.type = kind if layout == "v1" else ("Convolution" if kind == CONV4 else "InnerProduct")
        for array in blobs[name]:
            blob = layer.blobs.add()
            shape = (shape_of or {}).get((name, array.ndim), array.shape)
            if legacy:
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - len(shape)) + tuple(shape)
            else:
                blob.shape.dim.extend(shape)
            blob.data.extend(array.ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return path
