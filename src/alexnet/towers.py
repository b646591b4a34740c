"""The two-GPU split as the paper ran it (section 3.2): each tower's half of the network on its own device.

When to use it: ``model.tower_devices="cuda:0,cuda:1"`` is the paper's way to spread one network
over two devices (model parallelism; its GTX 580s had 3 GB each). It is not this project's way to
scale: data parallelism (DDP through torchrun) stays the default, and one current GPU holds the
whole network many times over. Use it to run the paper's dataflow, or to check that a checkpoint
behaves the same either way.

The parameters do not change: ``AlexNet``'s ``conv1`` ... ``fc8`` modules own them (the same
state_dict as the single-device ``groups=2`` network, so checkpoints load either way), and each
forward slices every layer's weight per tower -- tower t computes the first (t=0) or second (t=1)
half of the layer's kernels or units, which for the grouped conv2, conv4 and conv5 is exactly
group t -- and copies the slice to the tower's device. Autograd flows through the slicing and the
copy, so the gradients land on the parameters wherever the module lives. The copy is made every
forward: this reproduces the paper's dataflow, not its memory saving.

Where the towers talk (figure 2): conv1 sees the image on both devices; conv2, conv4 and conv5 see
only their own tower's half; conv3, fc6 and fc7 see both towers' outputs, concatenated onto each
device. fc8 runs whole on the first device on both towers' fc7 outputs, and the logits come back
there.

LRN, a deviation from the paper: on two GPUs the paper's LRN window (n = 5 adjacent kernel maps)
could only see the maps on its own GPU, so it did not cross the tower boundary. The single-device
``groups=2`` network's LRN runs over all the channels, so the two channels on each side of the
boundary see the other tower's. We follow the ``groups=2`` network, so that outputs and gradients
are the same either way: each tower normalises its half together with the other tower's ``n // 2``
edge channels (a halo copied across) and keeps its own half of the result.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .lrn import LocalResponseNorm


def parse_devices(spec: str) -> tuple[torch.device, torch.device]:
    """``"cuda:0,cuda:1"`` -> the two towers' devices; a ValueError naming the expected form otherwise."""
    parts = [part.strip() for part in spec.split(",")]
    try:
        devices = tuple(torch.device(part) for part in parts if part)
    except (RuntimeError, ValueError):
        devices = ()
    if len(parts) != 2 or len(devices) != 2:
        raise ValueError(f"model.tower_devices must be two comma-separated devices such as "
                         f"'cuda:0,cuda:1' or 'cpu,cpu' (empty: one device); got {spec!r}")
    return devices


def features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """conv1 ... pool5 as two towers: each tower's pool5 maps, flattened, on its own device."""
    devices = model.tower_devices
    xs = split(model.conv1, [x.to(d) for d in devices], devices)  # both halves of conv1 see the image
    xs = [model.pool(y) for y in act_lrn(model, xs, model.lrn1)]
    xs = [model.pool(y) for y in act_lrn(model, split(model.conv2, xs, devices), model.lrn2)]
    xs = [model.act(y) for y in split(model.conv3, exchange(xs, devices), devices)]  # sees both towers
    xs = [model.act(y) for y in split(model.conv4, xs, devices)]
    return [torch.flatten(model.pool(model.act(y)), 1) for y in split(model.conv5, xs, devices)]


def fc7_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """fc6 and fc7 as two towers (each sees both towers' inputs); dropout on each tower's fc6 half."""
    devices = model.tower_devices
    xs = [model.dropout(model.act(y)) for y in split(model.fc6, exchange(features(model, x), devices), devices)]
    return [model.act(y) for y in split(model.fc7, exchange(xs, devices), devices)]


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The whole network; fc8 runs on the first tower's device, where the logits are returned."""
    xs = [model.dropout(y) for y in fc7_features(model, x)]
    first = model.tower_devices[0]
    return F.linear(gather(xs, first), model.fc8.weight.to(first), model.fc8.bias.to(first))


def split(layer: nn.Conv2d | nn.Linear, inputs: list[torch.Tensor], devices) -> list[torch.Tensor]:
    """Tower t's half of ``layer``'s kernels (units) applied to ``inputs[t]`` on ``devices[t]``."""
    n = layer.weight.shape[0]
    outputs = []
    for t, (x, device) in enumerate(zip(inputs, devices)):
        rows = slice(0, n // 2) if t == 0 else slice(n // 2, n)
        w, b = layer.weight[rows].to(device), layer.bias[rows].to(device)
        if isinstance(layer, nn.Conv2d):
            outputs.append(F.conv2d(x, w, b, layer.stride, layer.padding))
        else:
            outputs.append(F.linear(x, w, b))
    return outputs


def exchange(xs: list[torch.Tensor], devices) -> list[torch.Tensor]:
    """Both towers' outputs concatenated (channels or units) onto each tower's device."""
    return [gather(xs, device) for device in devices]


def gather(xs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.cat([x.to(device) for x in xs], 1)


def act_lrn(model: nn.Module, xs: list[torch.Tensor], lrn: nn.Module) -> list[torch.Tensor]:
    """Activation and LRN per tower; the LRN window reaches ``n // 2`` channels into the other tower,
    as in the ``groups=2`` network (see the module docstring)."""
    halo = lrn.size // 2 if isinstance(lrn, LocalResponseNorm) else 0
    if not halo:
        return [model.act_lrn(x, lrn) for x in xs]
    a, b = xs
    a_out = model.act_lrn(torch.cat([a, b[:, :halo].to(a.device)], 1), lrn)[:, :a.shape[1]]
    b_out = model.act_lrn(torch.cat([a[:, -halo:].to(b.device), b], 1), lrn)[:, -b.shape[1]:]
    return [a_out, b_out]
