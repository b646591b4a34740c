"""The input pipelines: stored uint8 images -> the network's float input, stated per dataset kind.

This is the one place that says what happens between a batch of stored images and the network,
in training and in evaluation. The dataset kind (``data.dataset``) chooses the pipeline; it is
never inferred from which statistics happen to exist.

``cifar10`` (32x32 images in memory; the cifar10 recipe)::

    train: zero-pad by data.crop_padding, random input_size window, mirror     uint8
           float, PCA lighting if data.pca_std > 0, (x - mean) / std per channel  on the device
    eval:  the whole image (1 crop) and its mirror (2); 10: the four corners, centre and their
           mirrors of the image padded as in training

``imagenet`` (256x256 prepared images; the paper's sections 2 and 4.1)::

    train: random input_size window of the 256x256 image, mirror              uint8
           float minus the same window of the training set's mean image,      on the device
           PCA lighting, then / the per-channel pixel std if data.standardize
    eval:  the centre window (1), and its mirror (2), or the paper's ten patches (10), each minus
           its own window of the mean image (and / std)

The statistics come from the training set: prepared ImageNet's ``stats.safetensors`` (mean image,
RGB covariance and its eigen-decomposition), CIFAR-10's ``data.mean``/``data.std`` and, for its
lighting, the RGB covariance of its training pixels. Everything float runs on the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F

from .augment import crop_at, flip_where, pca_lighting, random_crop_offsets, random_flips, rgb_eigen, views

KINDS = ("cifar10", "imagenet")
RESIZE = ("center", "squash")
# Per-channel statistics on the 0..1 scale: CIFAR-10's training pixels (the cifar10 recipe's
# data.mean / data.std, figure1's modern setup) and torchvision's ImageNet normalisation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


PCA_SCALES = ("sqrt", "fb")  # data.pca_scale: see lighting_magnitude


@dataclass(frozen=True)
class Lighting:
    """Section 4.1's PCA lighting: ``magnitude`` (the shift along each principal component per unit
    alpha, see ``lighting_magnitude``), ``eigvec`` (columns), alphas ~ N(0, ``sigma``)."""

    magnitude: torch.Tensor  # (3,) on the 0..255 scale
    eigvec: torch.Tensor  # (3, 3), column i is p_i
    sigma: float


@dataclass(frozen=True)
class Pipeline:
    """What a batch of stored uint8 images goes through to become the network's input."""

    kind: str  # cifar10 | imagenet
    size: int  # the network's input side (model.input_size)
    padding: int  # zero padding before the random crop (cifar10; 0 for imagenet)
    flip: bool  # random mirror images in training
    mean: torch.Tensor  # float, 0..255: (3, 1, 1) per channel, or (3, S, S) the mean image
    std: torch.Tensor | None  # float, 0..255, (3, 1, 1); None: no division (the paper)
    lighting: Lighting | None
    channels_last: bool = True
    stored: int = 0  # the side images are stored at (prepared 256, CIFAR-10 32); 0: the mean image's, else size
    resize: str = "center"  # how an image file becomes stored x stored: center (the centre square, as
    #   prepare does) | squash (the whole image, aspect ignored: Caffe's ImageNet data)
    shrink: int = 0  # training only: each window shrunk to shrink x shrink after the float steps; 0 off

    def __post_init__(self):
        if not self.stored:  # frozen: set through object.__setattr__
            object.__setattr__(self, "stored", int(self.mean.shape[-1]) if self.mean.shape[-1] > 1 else self.size)
        if self.resize not in RESIZE:
            raise ValueError(f"pipeline resize must be one of {', '.join(RESIZE)}; got {self.resize!r}")

    @property
    def stored_size(self) -> int:
        """The side of the images as stored (prepared ImageNet 256, CIFAR-10 32): image files are
        brought to it (``resize``) before the pipeline sees them."""
        return self.stored

    def to(self, device: torch.device) -> Pipeline:
        """The same pipeline with its statistics on ``device`` (moved once, not per batch)."""
        std = None if self.std is None else self.std.to(device)
        return replace(self, mean=self.mean.to(device), std=std)

    def state_dict(self) -> dict:
        """What evaluation needs, for checkpoints (tensors, numbers and strings only)."""
        return {"kind": self.kind, "size": self.size, "padding": self.padding, "flip": self.flip,
                "mean": self.mean.cpu(), "std": None if self.std is None else self.std.cpu(),
                "stored": self.stored, "resize": self.resize}

    @classmethod
    def from_state(cls, state: dict, channels_last: bool = True) -> Pipeline:
        """The evaluation side of a checkpoint's pipeline (no lighting: that is training's)."""
        return cls(state["kind"], int(state["size"]), int(state["padding"]), bool(state["flip"]),
                   state["mean"].float(), None if state["std"] is None else state["std"].float(), None, channels_last,
                   int(state.get("stored", 0)), state.get("resize", "center"))

    # ------------------------------------------------------------------ training

    def train(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crops and mirrors on uint8, then the float steps. Random numbers come from the CPU
        ``generator`` in a fixed order (crop offsets, flips, lighting), so a seed gives the same
        batch on every device."""
        if self.padding:
            images = F.pad(images, (self.padding,) * 4)
        n, _, h, w = images.shape
        dy = dx = None
        if (h, w) != (self.size, self.size):
            dy, dx = random_crop_offsets(n, h, w, self.size, generator)
            images = crop_at(images, dy, dx, self.size)
        flip = random_flips(n, generator) if self.flip else None
        if flip is not None:
            images = flip_where(images, flip)
        x = self._to_float(images, self._train_mean(dy, dx, flip), generator)
        return self._shrunk(x) if self.shrink and self.shrink != self.size else x

    def _shrunk(self, x: torch.Tensor) -> torch.Tensor:
        """Progressive resizing's small inputs: the whole window, antialiased down to ``shrink``."""
        x = F.interpolate(x, size=(self.shrink, self.shrink), mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def _train_mean(self, dy, dx, flip) -> torch.Tensor:
        """The mean to subtract from each crop: per channel, or each crop's own window of the mean
        image, mirrored with it (so the result equals cropping the mean-subtracted image)."""
        if self.mean.shape[-1] == 1:
            return self.mean
        mean = self.mean if dy is None else crop_at(self.mean, dy, dx, self.size)
        return mean if flip is None else flip_where(mean.expand(len(flip), *mean.shape[-3:]), flip)

    def _to_float(self, images: torch.Tensor, mean: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = images.float() - mean
        if self.lighting is not None and generator is not None:  # in pixel units, before any division
            x = pca_lighting(x, self.lighting.magnitude, self.lighting.eigvec, generator, self.lighting.sigma)
        if self.std is not None:
            x = x * (1.0 / self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    # ------------------------------------------------------------------ evaluation

    def eval_size(self, crops: int) -> int | None:
        """The side of the test views: cifar10 shows the whole image (None) except for 10 crops."""
        return None if self.kind == "cifar10" and crops != 10 else self.size

    def views(self, images: torch.Tensor, crops: int) -> torch.Tensor:
        """The uint8 test views of each image (``crops`` per image, image-major)."""
        if self.kind == "cifar10" and crops == 10 and self.padding:
            images = F.pad(images, (self.padding,) * 4)
        return views(images, crops, self.eval_size(crops))

    def evaluate(self, images: torch.Tensor, crops: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, 3, H, W) stored images -> float (N * crops, 3, size, size) network input.

        ``crops=4`` (CIFAR-10, where the network takes both sizes: 28 and 32 give the same pool5 map):
        a tuple of two batches, the whole images and their mirrors, then the centre ``size`` windows
        (the training window) and their mirrors. Two scales of one image: on the 10-epoch demo network
        0.7-0.9 points below the whole image and its mirror, for 1.8x that pass's work (README).
        """
        if crops == 4:
            if why := views_refusal(self.kind, crops):
                raise ValueError(f"crops=4: {why}")
            whole = self._views(images, 2, None)  # a window as large as the image: the same two views
            return whole if self.size >= self.stored else (whole, self._views(images, 2, self.size))
        return self._views(images, crops, self.eval_size(crops))

    def _views(self, images: torch.Tensor, crops: int, size: int | None) -> torch.Tensor:
        x = self.views(images, crops) if size == self.eval_size(crops) else views(images, crops, size)
        mean = self.mean
        if mean.shape[-1] != 1:  # each view minus its own window of the mean image
            k = len(x) // len(images)
            mean = views(mean[None], crops, size)
            mean = mean.expand(len(images), *mean.shape).flatten(0, 1) if k > 1 else mean
        return self._to_float(x, mean, None)


def views_refusal(kind: str, crops: int) -> str | None:
    """Why ``crops`` test views cannot be cut for a ``kind`` network, or None (the one rule for eval,
    validation and the check before training)."""
    if crops == 4 and kind != "cifar10":
        return (f"the whole image and its centre window are for CIFAR-10 networks, which take both sizes; "
                f"{kind} networks cannot take their whole stored image: use 1, 2 or 10 views")
    return None


def pipeline_for(config, data, training: bool = True) -> Pipeline:
    """The pipeline of ``config``'s dataset kind, with the training set's statistics from ``data``.
    ``training=False``: the evaluation side only (no lighting), which for cifar10 needs no data."""
    kind, d = config.data.dataset, config.data
    if kind not in KINDS:
        raise ValueError(f"data.dataset must be one of {', '.join(KINDS)}; got {kind!r}")
    size, channels_last = config.model.input_size, config.train.channels_last
    if kind == "cifar10":
        mean = torch.tensor(d.mean, dtype=torch.float32).view(3, 1, 1) * 255
        std = torch.tensor(d.std, dtype=torch.float32).view(3, 1, 1) * 255
        lighting = None
        if d.pca_std and training:  # no prepared statistics: the RGB covariance of the training pixels
            eigval, eigvec = rgb_eigen(data.train_images)
            lighting = Lighting(lighting_magnitude(eigval, d.pca_scale), eigvec, d.pca_std)
        return Pipeline(kind, size, d.crop_padding, d.flip, mean, std, lighting, channels_last)
    stats = data.stats
    lighting = None
    if d.pca_std and training:
        lighting = Lighting(lighting_magnitude(stats["eigval"], d.pca_scale), stats["eigvec"], d.pca_std)
    std = channel_std(stats).view(3, 1, 1) if d.standardize else None
    return Pipeline(kind, size, 0, d.flip, stats["mean_image"].float(), std, lighting, channels_last)


def lighting_magnitude(eigval: torch.Tensor, scale: str) -> torch.Tensor:
    """PCA lighting's shift per unit alpha along each component, in pixel units (0..255), from the
    covariance eigenvalues ``eigval`` of 0..255 pixels. ``"sqrt"``: sqrt(lambda_i), the pixel std along
    p_i (this project's reading of the paper). ``"fb"``: fb.resnet.torch's lambda_i itself on the 0..1
    scale (eigval / 255**2), times 255 to turn its 0..1 shift into pixel units. fb / sqrt is sqrt(lambda_i)
    on the 0..1 scale: 0.47 for ImageNet's first component (lambda 0.2175), 0.14 and 0.07 for the others."""
    eigval = eigval.clamp_min(0)
    if scale == "sqrt":
        return eigval.sqrt()
    if scale == "fb":
        return eigval / 255**2 * 255
    raise ValueError(f"data.pca_scale must be one of {', '.join(PCA_SCALES)}; got {scale!r}")


def channel_std(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training set's per-channel pixel standard deviation (0..255) from its RGB covariance."""
    covariance = stats.get("covariance")
    if covariance is None:  # rebuilt from the eigen-decomposition: V diag(lambda) V^T
        covariance = stats["eigvec"] @ torch.diag(stats["eigval"]) @ stats["eigvec"].T
    return covariance.diagonal().clamp_min(1e-6).sqrt().float()
