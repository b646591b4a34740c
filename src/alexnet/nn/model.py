"""AlexNet as in section 3 of Krizhevsky, Sutskever and Hinton (2012), plus two variants.

The paper's network (``variant="paper"``, figure 2):

    conv1  96 @ 11x11 stride 4  -> ReLU -> LRN -> max-pool 3/2
    conv2 256 @ 5x5  (2 towers) -> ReLU -> LRN -> max-pool 3/2
    conv3 384 @ 3x3  (sees both towers) -> ReLU
    conv4 384 @ 3x3  (2 towers) -> ReLU
    conv5 256 @ 3x3  (2 towers) -> ReLU -> max-pool 3/2
    fc6 4096 -> ReLU -> dropout 0.5
    fc7 4096 -> ReLU -> dropout 0.5
    fc8 1000 (softmax in the loss)

60,965,224 parameters with the towers, 62,378,344 without.

Towers: the paper splits the kernels over two GPUs, and conv2, conv4 and conv5 only see
the half of the previous layer on their own GPU. That connectivity is exactly a grouped
convolution with ``groups=2``. conv1 (two 48-kernel halves that both see the image) and
conv3 (sees both halves) are ordinary convolutions, and so are the fully-connected layers.

Two devices: ``tower_devices="cuda:0,cuda:1"`` runs the towers as the paper did, each tower's half
of conv1-conv5 and fc6/fc7 held and computed on its own device, exchanging activations at conv3,
fc6, fc7 and fc8 (``towers.py``), with the same state_dict and outputs. That is model parallelism, the
paper's way to fit the net on two 3 GB GPUs; this project scales with data parallelism (DDP via torchrun).

One forward pass: the network is the ordered stages of ``STAGES`` (conv1, pool1, conv2, pool2, conv3,
conv4, conv5, pool5, fc6, fc7, fc8), each ending at a named tap (``model.taps[name]``, an identity
module that hooks can hold). ``forward`` walks them all; ``features(x, layer)`` walks them up to
``layer`` as in evaluation; the two-device split walks the same stages on two towers.

Input size: the paper says 224x224, but 224 with an 11x11 stride-4 kernel does not give
the 55x55 map it reports; Caffe used 227 with no padding. We pad conv1 by 2, so 224 gives
55x55 and 227 gives 56x56; both max-pool to 27x27 and reach 6x6 at pool5, so one network
with the paper's parameter count takes either size.

Variants:
- ``"torchvision"``: the single-tower layout of ``torchvision.models.alexnet`` (64-192-384-
  256-256 kernels, no LRN, adaptive 6x6 average pool, dropout before fc6 and fc7). Its
  state_dict loads torchvision's weights (keys ``features.0`` ... are renamed on load).
- ``"cifar"``: the same eight-layer design scaled to 32x32 images (``_CIFAR``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..runtime import unwrap
from . import towers as tower_split
from .lrn import LocalResponseNorm

VARIANTS = ("paper", "torchvision", "cifar")
STAGES = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8")
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")  # the stages that learn


@dataclass
class ModelConfig:
    variant: str = "paper"  # paper | torchvision | cifar
    num_classes: int | None = 1000  # fc8 outputs; None (a run's config): as many as the training data has classes
    activation: str = "relu"  # relu | tanh (figure 1's comparison)
    lrn: bool = True  # local response normalisation after conv1 and conv2 (section 3.3)
    overlap_pool: bool = True  # max-pool 3x3 stride 2 (section 3.4); False: 2x2 stride 2
    towers: bool = True  # two-GPU connectivity as groups=2 in conv2, conv4, conv5 (section 3.2)
    dropout: float = 0.5  # dropout probability on fc6 and fc7 (section 4.2); 0 disables
    width: float = 1.0  # multiplier on every conv and hidden fc width (1.0 = the paper's)
    one_gpu: bool = False  # section 3.2's comparison net: no towers, half the kernels in conv1-conv4, conv5 and fc full
    input_size: int = 224  # 224 or 227 for paper/torchvision, 32 for cifar
    init: str = "paper"  # paper: N(0, 0.01), bias 1 in conv2/4/5, fc6/7 | kaiming: He init (fast CIFAR runs)
    lrn_k: float = 2.0  # LRN's k (section 3.3: 2); BVLC's Caffe bvlc_alexnet uses 1 (alexnet import caffe)
    conv1_padding: int = -1  # -1: the variant's (paper 2, so 224 gives 55x55); Caffe's deploy net: 0 at 227
    conv2_kernel: int = 0  # 0: the variant's (5, section 3.5); odd, padded to keep the map size
    # "": the towers as groups=2 convolutions on one device. "cuda:0,cuda:1": the paper's two-GPU split
    # (section 3.2, model parallel; see towers.py), same parameters and outputs. Not for scaling: use DDP.
    tower_devices: str = ""

    def __post_init__(self):
        _check_types(self)
        _check_choice("variant", self.variant, VARIANTS)
        _check_choice("activation", self.activation, ("relu", "tanh"))
        _check_choice("init", self.init, ("paper", "kaiming"))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.one_gpu and self.towers:
            raise ValueError("model.one_gpu is the one-tower comparison net: set model.towers=false with it")
        if (self.num_classes is not None and self.num_classes < 1) or not 0 < self.width < math.inf:
            raise ValueError("model.num_classes must be >= 1 (or left out: from the data) and model.width > 0 and "
                             f"finite; got num_classes={self.num_classes}, width={self.width}")
        if self.conv2_kernel < 0 or (self.conv2_kernel and self.conv2_kernel % 2 == 0):
            raise ValueError(f"model.conv2_kernel must be odd (or 0: the variant's 5); got {self.conv2_kernel}")
        if self.input_size < 1:
            raise ValueError(f"model.input_size={self.input_size}: must be at least 1 (the paper: 224)")
        if self.lrn_k <= 0 or self.conv1_padding < -1:
            raise ValueError("model.lrn_k must be > 0 and model.conv1_padding >= 0 (or -1: the variant's)")
        if self.tower_devices:
            if self.variant == "torchvision" or not self.towers:
                raise ValueError("model.tower_devices splits the paper's two towers over two devices: "
                                 "it needs model.variant paper or cifar with model.towers=true")
            tower_split.parse_devices(self.tower_devices)


_INTS = ("input_size", "conv1_padding", "conv2_kernel")
_NUMBERS = ("dropout", "width", "lrn_k")
_BOOLS = ("lrn", "overlap_pool", "towers", "one_gpu")
_STRINGS = ("variant", "activation", "init", "tower_devices")


def _check_types(config: ModelConfig) -> None:
    """A value of the wrong type (``num_classes="10"``, ``towers="no"``) refused in one line, before a comparison
    fails on it or, worse, a truthy string passes for True."""
    def refuse(name: str, kind: str) -> None:
        value = getattr(config, name)
        raise TypeError(f"model.{name} must be {kind}; got {value!r} ({type(value).__name__})")

    if config.num_classes is not None and (isinstance(config.num_classes, bool) or
                                           not isinstance(config.num_classes, int)):
        refuse("num_classes", "an int (or None: from the data)")
    for name in _INTS:
        if isinstance(getattr(config, name), bool) or not isinstance(getattr(config, name), int):
            refuse(name, "an int")
    for name in _NUMBERS:
        if isinstance(getattr(config, name), bool) or not isinstance(getattr(config, name), (int, float)):
            refuse(name, "a number")
    for name in _BOOLS:
        if not isinstance(getattr(config, name), bool):
            refuse(name, "True or False")
    for name in _STRINGS:
        if not isinstance(getattr(config, name), str):
            refuse(name, "a string")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class _Layout:
    """Kernel counts and geometry of one variant (before the width multiplier)."""

    channels: tuple[int, int, int, int, int]  # conv1..conv5 kernels
    hidden: int  # fc6 and fc7 units
    conv1: tuple[int, int, int]  # kernel, stride, padding
    conv2_kernel: int
    pool_padding: int  # keeps the map sizes even on 32x32 inputs
    pool5_size: int  # spatial size after pool5


_PAPER = _Layout((96, 256, 384, 384, 256), 4096, (11, 4, 2), 5, 0, 6)
_TORCHVISION = _Layout((64, 192, 384, 256, 256), 4096, (11, 4, 2), 5, 0, 6)
# CIFAR: 32x32 images are ~7x smaller than 224, so conv1 is 5x5 stride 1 instead of 11x11
# stride 4, and the three max-pools (3/2, padding 1) take 32 -> 16 -> 8 -> 4. Kernel counts
# are the paper's divided by 1.5 (conv1..5: 64, 128, 256, 256, 192) and fc6/fc7 have 1024
# units instead of 4096: ten classes and 50,000 images need far less head than ImageNet.
_CIFAR = _Layout((64, 128, 256, 256, 192), 1024, (5, 1, 2), 5, 1, 4)


def _layout(config: ModelConfig) -> _Layout:
    return {"paper": _PAPER, "torchvision": _TORCHVISION, "cifar": _CIFAR}[config.variant]


def _scaled(n: int, width: float, groups: int) -> int:
    return max(groups, int(round(n * width / groups)) * groups)


class AlexNet(nn.Module):
    """The network of figure 2; ``AlexNet(ModelConfig())`` is exactly the paper's."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        if config is not None and not isinstance(config, ModelConfig):
            hint = "AlexNet(ModelConfig(**config))" if isinstance(config, dict) else "AlexNet(ModelConfig())"
            raise TypeError(f"AlexNet takes a ModelConfig; got {type(config).__name__} {config!r:.60}: e.g. {hint}")
        self.config = config = config or ModelConfig()
        if config.num_classes is None:
            raise ValueError("model.num_classes is left to the data: give the number of classes the network predicts")
        layout = _layout(config)
        towers = 2 if config.towers and config.variant != "torchvision" else 1
        c1, c2, c3, c4, c5 = (_scaled(c, config.width, 2) for c in layout.channels)
        if config.one_gpu:  # "we did not halve the size of the final convolutional layer (nor the
            # fully-connected layers which follow)" (section 3.2): about the two-tower parameter count
            c1, c2, c3, c4 = (_scaled(c, config.width / 2, 2) for c in layout.channels[:4])
        hidden = _scaled(layout.hidden, config.width, 1)
        k1, s1, p1 = layout.conv1
        p1 = p1 if config.conv1_padding < 0 else config.conv1_padding
        self.conv1 = nn.Conv2d(3, c1, k1, stride=s1, padding=p1)
        k2 = config.conv2_kernel or layout.conv2_kernel
        self.conv2 = nn.Conv2d(c1, c2, k2, padding=k2 // 2, groups=towers)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)  # crosses the towers
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=towers)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=towers)
        self.act = nn.ReLU(inplace=True) if config.activation == "relu" else nn.Tanh()
        self.lrn1, self.lrn2 = (self._lrn() for _ in range(2))
        # Overlapping pooling (section 3.4): z=3, s=2. The ablation uses z=s=2, which gives
        # the same map sizes here (55 -> 27 -> 13 -> 6), so the fc6 shape is unchanged.
        size = 3 if config.overlap_pool else 2
        pad = layout.pool_padding if config.overlap_pool else 0
        self.pool = nn.MaxPool2d(size, stride=2, padding=pad)
        self.pool5_avg = nn.AdaptiveAvgPool2d(6) if config.variant == "torchvision" else nn.Identity()
        self.pool5_side = layout.pool5_size
        self.fc6 = nn.Linear(c5 * layout.pool5_size**2, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, config.num_classes)
        self.dropout = nn.Dropout(config.dropout)
        # Dropout on the inputs of these layers: the paper's on the outputs of fc6 and fc7 (section 4.2),
        # torchvision's before fc6 and fc7.
        self.dropped = ("fc6", "fc7") if config.variant == "torchvision" else ("fc7", "fc8")
        self.taps = nn.ModuleDict({name: nn.Identity() for name in STAGES})
        self.tower_devices = tower_split.parse_devices(config.tower_devices) if config.tower_devices else None
        self.reset_parameters()
        if self.tower_devices:  # each tower's halves of conv1 ... fc7 on its own device (towers.py)
            tower_split.split_layers(self)
        if config.variant == "torchvision":
            self._register_load_state_dict_pre_hook(_rename_torchvision_keys)

    def _lrn(self) -> nn.Module:
        """Section 3.3's LRN after conv1's and conv2's ReLU (fused with it: one pass), or nothing."""
        config = self.config
        if not config.lrn or config.variant == "torchvision":
            return nn.Identity()
        return LocalResponseNorm(k=config.lrn_k, relu=config.activation == "relu")

    def to(self, *args, **kwargs):
        """As ``nn.Module.to``; the two-device split ignores the device (its towers stay on theirs)."""
        if not self.tower_devices:
            return super().to(*args, **kwargs)
        _device, dtype, _non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        return super().to(dtype=dtype, memory_format=memory_format) if dtype or memory_format else self

    def _apply(self, fn, *args, **kwargs):
        """``.cuda()``, ``.cpu()``, ``.float()`` ...; the two-device split puts its towers back on theirs."""
        super()._apply(fn, *args, **kwargs)
        if self.tower_devices:
            tower_split.place(self)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (on the first tower's device in the two-device split)."""
        return self.forward_to(x, "fc8")

    def features(self, x: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        """The activations at the tap ``layer`` (one of ``STAGES``) as in evaluation, without dropout
        whatever the mode: conv maps after their ReLU (and LRN), pool5 flattened, fc6 and fc7 after
        their ReLU (fc7: the paper's retrieval, section 6.1), fc8 the logits."""
        return self.forward_to(x, layer, dropout=False)

    def forward_to(self, x: torch.Tensor, layer: str = "fc8", dropout: bool = True) -> torch.Tensor:
        """The stages from conv1 up to ``layer``, in order, each through its tap; ``dropout=False`` leaves
        dropout out also in training mode. In the two-device split the towers' outputs are gathered
        onto the first device at the end."""
        self._check_input(x, layer)
        split = self.tower_devices
        if split:  # both halves of conv1 see the image
            x = [x.to(device) for device in split]
        x = self._walk(x, STAGES[:_index(layer) + 1], dropout)
        return tower_split.gather(x, split[0]) if isinstance(x, list) else x

    def _check_input(self, x, layer: str) -> None:
        """Refuse, in one line, an input the first layer would fail on deep inside torch (a lone image, pixels
        as uint8, channels last, the wrong dtype, a side too small to reach pool5)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"AlexNet takes a float tensor (N, 3, H, W); got {type(x).__name__}: make one with "
                            "load_run(CKPT).pipeline.eval_input(uint8 images), or torch.as_tensor")
        shape = tuple(x.shape)
        if x.dim() != 4 or shape[1] != 3:
            hint = ("one image: add the batch dimension, x[None]" if x.dim() == 3 and shape[0] == 3 else
                    "channels last: x.permute(0, 3, 1, 2)" if x.dim() == 4 and shape[-1] == 3 else
                    "grayscale: x.expand(-1, 3, -1, -1)" if x.dim() == 4 and shape[1] == 1 else "a batch of RGB images")
            raise ValueError(f"AlexNet takes a float tensor (N, 3, H, W); got shape {shape}: {hint}")
        if not x.is_floating_point():
            raise TypeError(f"AlexNet takes normalised float input; got {x.dtype} pixels: pass uint8 images through "
                            "load_run(CKPT).pipeline.eval_input(images) (mean subtraction and the centre crop)")
        weight = self.conv1.weight.dtype if not self.tower_devices else x.dtype
        if x.dtype != weight and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"the input is {x.dtype} but the network's weights are {weight}: x.to({weight}), or "
                            f"model.to({x.dtype})")
        maps = [pool5_side(self.config, side) for side in shape[2:]]
        size = self.config.input_size
        if min(maps) < 1:
            raise ValueError(f"AlexNet input {shape[2]}x{shape[3]} is too small for this network: it is built for "
                             f"{size}x{size} (pipeline.eval_input crops stored images to it)")
        # fc6 takes pool5's map at its built size; training's smaller inputs (data.shrink_size) are averaged up to
        # it, and torchvision's layout pools any map to 6x6 itself
        fixed = not self.training and self.config.variant != "torchvision" and _index(layer) >= _index("fc6")
        if fixed and maps != [self.pool5_side] * 2:
            raise ValueError(f"AlexNet input {shape[2]}x{shape[3]} gives a {maps[0]}x{maps[1]} pool5 map but fc6 "
                             f"takes {self.pool5_side}x{self.pool5_side}: give {size}x{size} inputs "
                             "(pipeline.eval_input crops stored images to it)")

    def forward_from(self, x: torch.Tensor, stage: str, dropout: bool = True) -> torch.Tensor:
        """The stages from ``stage`` to fc8 on ``x``, the activations just before it (``features(image,
        the stage before)``): ``forward_from(features(image, "fc7"), "fc8")`` is ``forward(image)`` in
        evaluation. A linear probe trains fc8 on cached fc7 features this way. One device only."""
        if self.tower_devices:
            raise ValueError("forward_from runs the one-device network; load the checkpoint without "
                             "model.tower_devices")
        return self._walk(x, STAGES[_index(stage):], dropout)

    def _walk(self, x, stages: tuple[str, ...], dropout: bool):
        for name in stages:
            x = self.taps[name](self._stage(name, x, dropout))
        return x

    def _stage(self, name: str, x, dropout: bool):
        """One stage: a pool, or a layer with what follows it (ReLU, LRN) and dropout before it."""
        if name.startswith("pool"):
            return self._each(self._pool5 if name == "pool5" else self.pool, x)
        if dropout and name in self.dropped:
            x = self._each(self.dropout, x)
        x = self._layer(name, x)
        if name == "fc8":
            return x
        lrn = {"conv1": self.lrn1, "conv2": self.lrn2}.get(name)
        if lrn is None:
            return self._each(self.act, x)
        if self.tower_devices:
            return tower_split.act_lrn(lambda t: self._act_lrn(t, lrn), x, lrn)
        return self._act_lrn(x, lrn)

    def _act_lrn(self, x: torch.Tensor, lrn: nn.Module) -> torch.Tensor:
        """Activation, then LRN (section 3.3); one fused pass when the LRN applies the ReLU itself."""
        return lrn(x) if getattr(lrn, "relu", False) else lrn(self.act(x))

    def _layer(self, name: str, x):
        """Layer ``name`` on ``x``; in the two-device split its halves on the towers' inputs: conv3, fc6 and
        fc7 see both towers (exchanged), fc8 runs whole on the first device."""
        layer = getattr(self, name)
        if not isinstance(x, list):
            return layer(x)
        if name == "fc8":
            return layer(tower_split.gather(x, self.tower_devices[0]))
        return layer(tower_split.exchange(x, self.tower_devices) if name in ("conv3", "fc6", "fc7") else x)

    def _each(self, fn, x):
        """``fn`` on a tensor, or on each tower's tensor."""
        return [fn(t) for t in x] if isinstance(x, list) else fn(x)

    def _pool5(self, x: torch.Tensor) -> torch.Tensor:
        """pool5 and flatten: fc6's input."""
        x = self.pool(x)
        if self.training and x.shape[-1] != self.pool5_side:  # progressive resizing's small inputs
            # (data.shrink_size): pool5's smaller map averaged up to the size fc6 is built for, as
            # torchvision's AdaptiveAvgPool2d does for every input; at model.input_size it is not used.
            x = nn.functional.adaptive_avg_pool2d(x, self.pool5_side)
        return torch.flatten(self.pool5_avg(x), 1)

    def layers(self) -> list[nn.Module]:
        """The layers that learn, conv1 ... fc8."""
        return [getattr(self, name) for name in LAYERS]

    def set_lrn_compiled(self, compiled: bool, dynamic: bool = False) -> AlexNet:
        """Run the LRN layers' compiled kernels (a few fixed shapes, or any batch size if ``dynamic``) or
        their eager ones (any shape, no compiling)."""
        for lrn in (self.lrn1, self.lrn2):
            if isinstance(lrn, LocalResponseNorm):
                lrn.compiled, lrn.dynamic = compiled, dynamic
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.
        (Called before the two-device split, on whole layers.)"""
        ones = {self.conv2, self.conv4, self.conv5, self.fc6, self.fc7}
        for layer in self.layers():
            if self.config.init == "paper":
                nn.init.normal_(layer.weight, 0.0, 0.01)
                nn.init.constant_(layer.bias, 1.0 if layer in ones else 0.0)
            else:
                # Deviation for short CIFAR runs: He init keeps activations at unit scale
                # through eight layers without normalisation, so training starts at once.
                gain = "relu" if self.config.activation == "relu" else "tanh"
                nn.init.kaiming_normal_(layer.weight, nonlinearity=gain)
                nn.init.zeros_(layer.bias)
        if self.config.init == "kaiming":
            nn.init.normal_(self.fc8.weight, 0.0, 1.0 / math.sqrt(self.fc8.in_features))


def _index(stage: str) -> int:
    if stage not in STAGES:
        raise ValueError(f"layer must be one of {', '.join(STAGES)}; got {stage!r}")
    return STAGES.index(stage)


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
    """``AlexNet.features`` of ``model`` (also inside DDP or torch.compile wrappers) without gradients:
    the activations at ``layer`` for a float input batch (``Pipeline.eval_input`` makes one)."""
    network = unwrap(model)
    if not isinstance(network, AlexNet):
        raise TypeError(f"features takes an AlexNet (or one wrapped by DDP or torch.compile); got "
                        f"{type(network).__name__}: load one with load_model(CKPT)")
    return network.features(images, layer)


TORCHVISION_NAMES = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
    "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
}


def _rename_torchvision_keys(state_dict, prefix, *_args, **_kwargs):
    """Let ``load_state_dict`` take ``torchvision.models.alexnet`` weights as they are."""
    for old, new in TORCHVISION_NAMES.items():
        for kind in ("weight", "bias"):
            key = f"{prefix}{old}.{kind}"
            if key in state_dict:
                state_dict[f"{prefix}{new}.{kind}"] = state_dict.pop(key)


def pool5_side(config: ModelConfig, size: int) -> int:
    """The side of pool5's map for ``size`` x ``size`` inputs (fc6 is built for ``config.input_size``)."""
    layout = _layout(config)
    kernel, stride, padding = layout.conv1
    padding = padding if config.conv1_padding < 0 else config.conv1_padding
    side = (size + 2 * padding - kernel) // stride + 1
    window, pad = (3, layout.pool_padding) if config.overlap_pool else (2, 0)
    for _ in range(3):  # pool1, pool2, pool5; conv2..conv5 keep the side
        side = (side + 2 * pad - window) // 2 + 1
    return side


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
