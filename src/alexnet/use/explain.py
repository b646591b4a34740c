"""Where the network looks: heat maps of the evidence for a class, by Grad-CAM and by occlusion.

Both are captum's (``LayerGradCam``, ``Occlusion``) over the one forward pass's taps:

- **Grad-CAM** (Selvaraju et al. 2017, whose AlexNet results are on the paper's network): the last
  convolutional maps (the ``conv5`` tap: after ReLU, both towers' 256 maps together) weighted by the
  class score's mean gradient over each map, summed, and only the positive part kept; 13x13 for the
  paper's network at 224, brought to the input's size bilinearly. One forward and one backward pass.
- **Occlusion** (Zeiler & Fergus 2014, section 4.2): a square of the mean colour (0 in the network's
  input: the mean image or mean colour subtracted) slid over the image; a pixel's value is the mean
  drop of the class probability over the squares covering it. One forward pass per position, batched.

A map is computed on the window the network sees (``Pipeline.window``: 224 of the stored 256) and
then laid back onto the photo it came from (``on_photo``): the window's place in the stored image, the
stored image's place in the photo (its centre square, or the whole photo squashed), resized to the
photo's own height x width; the photo's parts the network never saw are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..data.pipeline import Pipeline
from ..nn.fields import at_input, receptive_fields

METHODS = ("gradcam", "occlusion")


@dataclass
class Explainer:
    """A network in eval mode (on ``device``) and its input ``pipeline``: maps of stored uint8 images."""

    model: torch.nn.Module
    pipeline: Pipeline
    device: torch.device
    window: int = 0  # occlusion: the square's side in input pixels; 0 the input side // 7 (32 of 224)
    stride: int = 0  # occlusion: its step; 0 half the window
    batch_size: int = 64  # occlusion: inputs per forward pass (positions x images)

    def __post_init__(self):
        if not hasattr(self.model, "taps"):
            raise ValueError("heat maps need the network's layers: give a checkpoint (.pt), not an exported .onnx")
        if getattr(self.model, "tower_devices", None):
            raise ValueError("heat maps run the one-device network: load the checkpoint without model.tower_devices "
                             "(alexnet.load_run does by default)")

    def input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) stored images -> the float centre views the network is tested on."""
        return self.pipeline.eval_input(images.to(self.device))

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)

    def maps(self, x: torch.Tensor, target: torch.Tensor, method: str) -> torch.Tensor:
        """float32 (N, n, n) maps of network inputs ``x`` (N, 3, n, n) for classes ``target`` (N,), on the CPU."""
        if method == "gradcam":
            return self.gradcam(x, target)
        if method == "occlusion":
            return self.occlusion(x, target)
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")

    def gradcam(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import LayerGradCam

        with torch.enable_grad():
            cam = LayerGradCam(self.model, self.model.taps["conv5"])
            maps = cam.attribute(x, target=target.to(x.device), relu_attributions=True)
        # each conv5 cell at the centre of its receptive field (a plain resize would shift the map by up to 8
        # pixels on the paper's network at 224)
        maps = at_input(maps.detach().float(), receptive_fields(self.model)["conv5"], x.shape[-1])
        return maps[:, 0].clamp_min(0).cpu()

    @torch.no_grad()
    def occlusion(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import Occlusion

        window, stride = self.occluder(x.shape[-1])
        maps = Occlusion(self.probabilities).attribute(
            x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
            baselines=0.0, target=target.to(x.device), perturbations_per_eval=max(1, self.batch_size // len(x)))
        return maps.float().mean(dim=1).cpu()  # the same drop in every channel: one map

    def occluder(self, side: int) -> tuple[int, int]:
        """The occluding square's side and stride for inputs ``side`` pixels wide, refused if it does not fit."""
        window = self.window or max(2, side // 7)
        stride = self.stride or max(1, window // 2)
        if not 1 <= window <= side:
            raise ValueError(f"--window {window} must be between 1 and the network's input side {side}")
        if not 1 <= stride <= window:
            raise ValueError(f"--stride {stride} must be between 1 and the window's side {window} (a larger step "
                             "would leave pixels no square covers)")
        return window, stride


def find_class(given: str, classes: list[dict]) -> int:
    """The output ``given`` names: its exact wnid, else its exact name (case-insensitive; refused where two
    classes share it, e.g. ImageNet's two cranes), else its index; ValueError naming why not."""
    wanted = given.strip().lower()
    for key in ("wnid", "name"):
        found = [int(c["index"]) for c in classes if str(c[key]).lower() == wanted]
        if len(found) > 1:
            wnids = ", ".join(classes[i]["wnid"] for i in found)
            raise ValueError(f"{len(found)} classes are named {given!r} ({wnids}): give the wnid")
        if found:
            return found[0]
    if wanted.isdigit() and int(wanted) < len(classes):
        return int(wanted)
    shown = ", ".join(str(c["name"]) for c in classes[:5]) + (" ..." if len(classes) > 5 else "")
    raise ValueError(f"{given!r} is not a wnid, a class name or an index below {len(classes)} ({shown})")


def class_map(explainer: Explainer, stored: torch.Tensor, k: int, method: str) -> torch.Tensor:
    """The float32 (n, n) map of class ``k`` over the window the network sees of a uint8 (3, S, S) stored image."""
    return explainer.maps(explainer.input(stored[None]), torch.tensor([k]), method)[0]


def on_photo(window_map: torch.Tensor, pipeline: Pipeline, height: int, width: int) -> torch.Tensor:
    """A map of the network's input window (n, n) laid onto the photo it came from: float32 (height, width)."""
    stored, n = pipeline.stored, window_map.shape[-1]
    full = torch.zeros(stored, stored)
    top = (stored - n) // 2  # Pipeline.window: the centre window of the stored image
    full[top:top + n, top:top + n] = window_map
    if pipeline.resize == "squash":  # the whole photo was squashed to stored x stored
        return _resized(full, height, width)
    side = min(height, width)  # the photo's centre square became the stored image
    out = torch.zeros(height, width)
    y, x = (height - side) // 2, (width - side) // 2
    out[y:y + side, x:x + side] = _resized(full, side, side)
    return out


def _resized(m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(m.shape) == (height, width):
        return m
    antialias = height < m.shape[0] or width < m.shape[1]
    return F.interpolate(m[None, None], size=(height, width), mode="bilinear", align_corners=False,
                         antialias=antialias)[0, 0]


def ranked_hiding(x: torch.Tensor, maps: torch.Tensor, share: float, lowest: bool = False) -> torch.Tensor:
    """``x`` with the ``share`` of each input's pixels that its map ranks highest (``lowest``: lowest) set to
    0, the mean colour: the deletion test of how much the ranked evidence matters."""
    n, pixels = maps.shape[0], maps[0].numel()
    k = round(share * pixels)
    order = maps.reshape(n, -1).argsort(dim=1, descending=not lowest)[:, :k]
    keep = torch.ones(n, pixels, device=x.device)
    keep.scatter_(1, order.to(x.device), 0.0)
    return x * keep.view(n, 1, *maps.shape[1:])


def random_squares(x: torch.Tensor, share: float, square: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` with random ``square``-pixel squares (at least ``share`` of each input's area) set to 0."""
    n, _, h, w = x.shape
    keep = torch.ones(n, h, w)
    for i in range(n):
        while (keep[i] == 0).float().mean() < share:
            top = int(torch.randint(0, h - square + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - square + 1, (1,), generator=generator))
            keep[i, top:top + square, left:left + square] = 0
    return x * keep[:, None].to(x.device)
