"""The two-GPU split as the paper ran it (section 3.2): each tower's half of the network on its own device.

When to use it: ``model.tower_devices="cuda:0,cuda:1"`` is the paper's way to spread one network
over two devices (model parallelism; its GTX 580s had 3 GB each). It is not this project's way to
scale: data parallelism (DDP through torchrun) stays the default, and one current GPU holds the
whole network many times over. Use it to run the paper's dataflow, or to check that a checkpoint
behaves the same either way.

Where the parameters live: each of conv1 ... conv5, fc6 and fc7 becomes a ``Halves`` module,
tower 0's half of the layer's kernels (units) in ``a`` on the first device and tower 1's in ``b``
on the second -- for the grouped conv2, conv4 and conv5 that half is exactly group t -- and fc8
lives on the first device, as in the paper. ``AlexNet.to(device)`` leaves them there (dtype and
memory format still change). Commands that load a checkpoint for inference load the one-device
``groups=2`` network instead (``runs.load.load_run``), so a split run's checkpoint runs anywhere. The state_dict is the
single-device ``groups=2`` network's (``conv1.weight`` ...: the halves concatenated on save, split
on load), so checkpoints load either way. Optimiser state is per half, so a run continues only
with the same ``tower_devices``.

The network's one forward pass (``AlexNet.forward_to``) walks the same stages either way; in the
split each stage takes and gives one tensor per tower, and this module supplies what differs: the
layers as ``Halves``, the exchanges, and the LRN across the tower boundary.

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


SPLIT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # fc8: whole, on the first device


class Halves(nn.Module):
    """One layer of the two-device split: tower 0's half of its kernels (units) as ``a`` on the first
    device, tower 1's as ``b`` on the second. ``forward`` takes and returns one tensor per tower.
    Its state_dict is the whole layer's, ``weight`` and ``bias`` (the halves concatenated)."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, devices):
        super().__init__()
        self.devices = devices
        n = layer.weight.shape[0]
        self.a, self.b = (_half(layer, rows, device) for rows, device in
                          zip((slice(0, n // 2), slice(n // 2, n)), devices))
        self.register_state_dict_post_hook(_merge_halves)
        self.register_load_state_dict_pre_hook(_split_halves)

    @property
    def weight(self) -> torch.Tensor:
        """The whole layer's weight on the first device (for reading, e.g. Figure 3's conv1 kernels)."""
        return torch.cat([self.a.weight, self.b.weight.to(self.a.weight.device)])

    @property
    def bias(self) -> torch.Tensor:
        return torch.cat([self.a.bias, self.b.bias.to(self.a.bias.device)])

    def place(self) -> None:
        self.a.to(self.devices[0])
        self.b.to(self.devices[1])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.a(xs[0]), self.b(xs[1])]


def _half(layer: nn.Conv2d | nn.Linear, rows: slice, device: torch.device) -> nn.Module:
    """``layer``'s kernels (units) ``rows`` as a layer of their own on ``device``; for a grouped conv
    (groups=2) the half is one group: a plain conv on its tower's half of the input channels."""
    weight = layer.weight.detach()[rows]
    if isinstance(layer, nn.Conv2d):
        half = nn.Conv2d(weight.shape[1], weight.shape[0], layer.kernel_size, layer.stride, layer.padding,
                         device="meta")
    else:
        half = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    half.to_empty(device=device)
    with torch.no_grad():
        half.weight.copy_(weight)
        half.bias.copy_(layer.bias.detach()[rows])
    return half


def _merge_halves(module, state_dict, prefix, local_metadata) -> None:
    for kind in ("weight", "bias"):
        a, b = state_dict.pop(f"{prefix}a.{kind}"), state_dict.pop(f"{prefix}b.{kind}")
        state_dict[f"{prefix}{kind}"] = torch.cat([a, b.to(a.device)])


def _split_halves(module, state_dict, prefix, *args) -> None:
    for kind in ("weight", "bias"):
        whole = state_dict.pop(f"{prefix}{kind}", None)
        if whole is not None:
            n = whole.shape[0]
            state_dict[f"{prefix}a.{kind}"], state_dict[f"{prefix}b.{kind}"] = whole[:n // 2], whole[n // 2:]


def split_layers(model: nn.Module) -> None:
    """Turn ``model``'s conv1 ... fc7 into ``Halves`` on ``model.tower_devices`` and place the rest."""
    for name in SPLIT_LAYERS:
        setattr(model, name, Halves(getattr(model, name), model.tower_devices))
    place(model)


def place(model: nn.Module) -> None:
    """Each tower's halves on its device; fc8 (and anything else with state) on the first."""
    for name in SPLIT_LAYERS:
        getattr(model, name).place()
    model.fc8.to(model.tower_devices[0])


def exchange(xs: list[torch.Tensor], devices) -> list[torch.Tensor]:
    """Both towers' outputs concatenated (channels or units) onto each tower's device."""
    return [gather(xs, device) for device in devices]


def gather(xs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.cat([x.to(device) for x in xs], 1)


def act_lrn(stage, xs: list[torch.Tensor], lrn: nn.Module) -> list[torch.Tensor]:
    """``stage`` (activation and LRN, one tower's maps at a time) on each tower; the LRN window reaches
    ``n // 2`` channels into the other tower, as in the ``groups=2`` network (see the module docstring)."""
    halo = lrn.size // 2 if isinstance(lrn, LocalResponseNorm) else 0
    if not halo:
        return [stage(x) for x in xs]
    a, b = xs
    a_out = stage(torch.cat([a, b[:, :halo].to(a.device)], 1))[:, :a.shape[1]]
    b_out = stage(torch.cat([a[:, -halo:].to(b.device), b], 1))[:, -b.shape[1]:]
    return [a_out, b_out]
