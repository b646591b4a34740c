"""What a run changes between epochs: the training input size and which first layers still learn.

Both are ways to spend a fixed compute budget (the CIFAR-10 main job's ten minutes on a 2-core
CPU) on more learning, and both are decided by the epoch number alone, so a resumed run takes
the same steps as an uninterrupted one:

- Progressive resizing (``data.low_res_size``, ``data.low_res_epochs``): the first epochs train on
  random low_res_size windows of the stored images, the paper's own augmentation (random 224
  windows of 256x256 images, section 4.1) at CIFAR scale: 28x28 windows of 32x32 images are the
  same 7/8 of the side. Each step costs about (28/32)^2 of a full-size one. The last epochs train
  on the full-size input, so the network ends on the size it is tested on.
- Shrinking (``data.shrink_size``, ``data.shrink_epochs``): the first epochs shrink each training
  window to a smaller side (antialiased) before the network, progressive resizing as in fast.ai's
  DAWNBench runs; pool5's smaller map is averaged up to fc6's size (``AlexNet.pool5``). A 16x16
  input costs about half a 28x28 one (the CIFAR network's conv3-conv5 run on 4x4 instead of 7x7
  maps); the last epochs at full size teach fc6 the finer map and end on the tested scale. On the
  CIFAR-10 demo (16x16 in epochs 1-6 of 10) it saved 27% of the time and cost 2.7 points, more than
  fewer epochs cost, so the recipe does not use it (README, "What each change gave").
- Freezing the first layers (``optim.freeze_after``, after FreezeOut, Brock et al. 2017): conv1's
  kernels settle in the first epochs (figure 3's filters); once it stops learning, no gradient is
  needed below conv2's input, which drops conv1's backward, the LRN and pool1 backward passes and
  conv2's input gradient from every step (a fifth of the CIFAR network's step).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .data.pipeline import Pipeline, views_refusal
from .errors import UsageError
from .model import ModelConfig, pool5_side

CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def check(config) -> None:
    """Refuse, before training, a low-resolution or shrink size the network cannot take (fc6 is built for
    model.input_size) and validation views the dataset cannot give."""
    size, model = config.data.low_res_size, config.model
    if size and config.data.low_res_epochs and not _fits(model, size):
        fits = [s for s in range(8, model.input_size + 1) if _fits(model, s)]
        hint = f"choose one of {fits[0]}..{fits[-1]}" if fits else "set data.low_res_size=0"
        raise UsageError(f"data.low_res_size={size} gives the {model.variant} network another pool5 map than "
                         f"model.input_size={model.input_size}, so fc6 cannot take it; {hint}")
    crops = config.train.val_crops
    if why := views_refusal(config.data.dataset, crops):
        raise UsageError(f"train.eval_crops={crops}: {why}")
    shrink = config.data.shrink_size
    if shrink and config.data.shrink_epochs and not (shrink <= model.input_size and pool5_side(model, shrink) >= 1):
        raise UsageError(f"data.shrink_size={shrink} leaves the {model.variant} network no pool5 map or is larger "
                         f"than model.input_size={model.input_size}; choose a size between the two, or 0")


def _fits(model: ModelConfig, size: int) -> bool:
    if size > model.input_size:
        return False
    side = pool5_side(model, size)
    return side >= 1 if model.variant == "torchvision" else side == pool5_side(model, model.input_size)


def train_pipeline(pipeline: Pipeline, config, epoch: int) -> Pipeline:
    """The training pipeline of epoch ``epoch`` (0-based): low-resolution windows, no padding, early on."""
    d = config.data
    if d.low_res_size and epoch < d.low_res_epochs:
        pipeline = replace(pipeline, size=d.low_res_size, padding=0)
    if d.shrink_size and epoch < d.shrink_epochs:
        pipeline = replace(pipeline, shrink=d.shrink_size)
    return pipeline


def eval_pipeline(pipeline: Pipeline, config) -> Pipeline:
    """The pipeline the network is tested through: the windows of its last training epoch (the paper's
    ten patches are windows of the training size: 224 of 256, or 28 of the 32x32 CIFAR images when the
    run trained on 28x28 windows, not on padded 32x32 crops), never shrunk."""
    return replace(train_pipeline(pipeline, config, config.optim.epochs - 1), shrink=0)


def frozen(config, epoch: int) -> tuple[str, ...]:
    """The conv layers that no longer learn in epoch ``epoch`` (0-based)."""
    return tuple(name for name, after in zip(CONVS, config.optim.freeze_after) if epoch >= after)


def set_frozen(model: torch.nn.Module, names: tuple[str, ...]) -> bool:
    """Freeze exactly ``names`` (the others learn); returns whether anything changed. A frozen
    layer's gradient is None, so the optimiser leaves its weights and momentum alone."""
    changed = False
    for name in CONVS:
        layer = getattr(model, name, None)
        if layer is None:
            continue
        learn = name not in names
        for p in layer.parameters():
            changed |= p.requires_grad != learn
            p.requires_grad_(learn)
            if not learn:
                p.grad = None
    return changed
