"""What a run changes between epochs: the training input size and which first layers still learn.

Both are ways to spend a fixed compute budget (the CIFAR-10 main job's ten minutes on a 2-core
CPU) on more learning, and both are decided by the epoch number alone, so a resumed run takes
the same steps as an uninterrupted one. The input size of each epoch is the data pipeline's
(``Pipeline.for_epoch``); which layers learn is decided here (``frozen``, ``set_frozen``):

- Progressive resizing (``data.low_res_size``, ``data.low_res_epochs``): the first epochs train on
  random low_res_size windows of the stored images, the paper's own augmentation (random 224
  windows of 256x256 images, section 4.1) at CIFAR scale: 28x28 windows of 32x32 images are the
  same 7/8 of the side. Each step costs about (28/32)^2 of a full-size one. The last epochs train
  on the full-size input, so the network ends on the size it is tested on.
- Shrinking (``data.shrink_size``, ``data.shrink_epochs``): the first epochs shrink each training
  window to a smaller side (antialiased) before the network, progressive resizing as in fast.ai's
  DAWNBench runs; pool5's smaller map is averaged up to fc6's size (``AlexNet._pool5``). A 16x16
  input costs about half a 28x28 one (the CIFAR network's conv3-conv5 run on 4x4 instead of 7x7
  maps); the last epochs at full size teach fc6 the finer map and end on the tested scale. On the
  CIFAR-10 demo (16x16 in epochs 1-6 of 10) it saved 27% of the time and cost 2.7 points, more than
  fewer epochs cost, so the recipe does not use it (docs/recipes.md).
- Freezing the first layers (``optim.freeze_after``, after FreezeOut, Brock et al. 2017): conv1's
  kernels settle in the first epochs (figure 3's filters); once it stops learning, no gradient is
  needed below conv2's input, which drops conv1's backward, the LRN and pool1 backward passes and
  conv2's input gradient from every step (a fifth of the CIFAR network's step).
"""

from __future__ import annotations

import torch

from ..config import trainable_layers
from ..nn.model import LAYERS

CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def frozen(config, epoch: int) -> tuple[str, ...]:
    """The layers of run config ``config`` that do not learn in epoch ``epoch`` (0-based): those
    ``optim.trainable`` leaves out, and the convolutions ``optim.freeze_after`` has frozen by then."""
    learning = trainable_layers(config.optim.trainable)
    late = {name for name, after in zip(CONVS, config.optim.freeze_after) if epoch >= after}
    return tuple(name for name in LAYERS if name not in learning or name in late)


def set_frozen(model: torch.nn.Module, names: tuple[str, ...]) -> bool:
    """Freeze exactly ``names`` (the others learn); returns whether anything changed. A frozen
    layer's gradient is None, so the optimiser leaves its weights and momentum alone."""
    changed = False
    for name in LAYERS:
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
