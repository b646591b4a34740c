"""The input pipelines: stored uint8 images -> the network's float input, stated per dataset kind.

This is the one place that says what happens between a batch of stored images and the network,
in training and in evaluation. The dataset kind (``data.dataset``) chooses the pipeline; it is
never inferred from which statistics happen to exist.

``cifar10`` (32x32 images in memory; the cifar10 recipe)::

    train: zero-pad by data.crop_padding, random input_size window, mirror     uint8
           float, PCA lighting if data.pca_std > 0, (x - mean) / std per channel  on the device
    eval:  the whole image (1 view) and its mirror (2); 4: also the centre training window and its
           mirror; 10: the four corners, centre and their mirrors of the training windows

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

from ..errors import UsageError
from . import views as test_views
from .augment import crop_at, flip_where, pca_lighting, random_crop_offsets, random_flips, rgb_eigen, views

KINDS = ("cifar10", "imagenet")
RESIZE = ("center", "squash")
MEAN_KINDS = ("channel", "image")
# Per-channel statistics on the 0..1 scale: CIFAR-10's training pixels (the cifar10 recipe's
# data.mean / data.std, figure1's modern setup) and torchvision's ImageNet normalisation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_SIDE = 32  # CIFAR-10's images are stored as they come


PCA_SCALES = ("sqrt", "fb")  # data.pca_scale: see lighting_magnitude


@dataclass(frozen=True)
class Lighting:
    """Section 4.1's PCA lighting: ``magnitude`` (the shift along each principal component per unit
    alpha, see ``lighting_magnitude``), ``eigvec`` (columns), alphas ~ N(0, ``sigma``)."""

    magnitude: torch.Tensor  # (3,) on the 0..255 scale
    eigvec: torch.Tensor  # (3, 3), column i is p_i
    sigma: float


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """What a batch of stored uint8 images goes through to become the network's input."""

    kind: str  # cifar10 | imagenet
    size: int  # the network's input side (model.input_size)
    stored: int  # the side images are stored at (prepared ImageNet 256, CIFAR-10 32): image files are
    #   brought to it (``resize``) before the pipeline sees them
    padding: int = 0  # zero padding before the random crop (cifar10; 0 for imagenet)
    flip: bool = False  # random mirror images in training
    mean: torch.Tensor  # float, 0..255: (3, 1, 1) per channel, or (3, stored, stored) the mean image
    mean_kind: str  # channel | image: which of the two ``mean`` is
    std: torch.Tensor | None = None  # float, 0..255, (3, 1, 1); None: no division (the paper)
    lighting: Lighting | None = None
    channels_last: bool = True
    resize: str = "center"  # how an image file becomes stored x stored: center (the centre square, as
    #   prepare does) | squash (the whole image, aspect ignored: Caffe's ImageNet data)
    shrink: int = 0  # training only: each window shrunk to shrink x shrink after the float steps; 0 off

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"pipeline kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.resize not in RESIZE:
            raise ValueError(f"pipeline resize must be one of {', '.join(RESIZE)}; got {self.resize!r}")
        expected = {"channel": (3, 1, 1), "image": (3, self.stored, self.stored)}.get(self.mean_kind)
        if expected is None or tuple(self.mean.shape) != expected:
            raise ValueError(f"a {self.mean_kind!r} mean must be {expected or 'channel or image'}; got "
                             f"{tuple(self.mean.shape)} (mean_kind is one of {', '.join(MEAN_KINDS)})")

    def to(self, device: torch.device) -> Pipeline:
        """The same pipeline with its statistics on ``device`` (moved once, not per batch)."""
        std = None if self.std is None else self.std.to(device)
        return replace(self, mean=self.mean.to(device), std=std)

    def state_dict(self) -> dict:
        """What evaluation needs, for checkpoints (tensors, numbers and strings only)."""
        return {"kind": self.kind, "size": self.size, "stored": self.stored, "padding": self.padding,
                "flip": self.flip, "mean": self.mean.cpu(), "mean_kind": self.mean_kind,
                "std": None if self.std is None else self.std.cpu(), "resize": self.resize}

    @classmethod
    def from_state(cls, state: dict, channels_last: bool = True) -> Pipeline:
        """The evaluation side of a checkpoint's pipeline (no lighting: that is training's)."""
        return cls(kind=state["kind"], size=int(state["size"]), stored=int(state["stored"]),
                   padding=int(state["padding"]), flip=bool(state["flip"]), mean=state["mean"].float(),
                   mean_kind=state["mean_kind"], std=None if state["std"] is None else state["std"].float(),
                   channels_last=channels_last, resize=state["resize"])

    # ------------------------------------------------------------------ the windows of each epoch

    def for_epoch(self, data, epoch: int) -> Pipeline:
        """The training pipeline of epoch ``epoch`` (0-based) of a run with data config ``data``:
        progressive resizing's low-resolution windows, no padding, early on (``data.low_res_*``),
        and windows shrunk before the network (``data.shrink_*``)."""
        pipeline = self
        if data.low_res_size and epoch < data.low_res_epochs:
            pipeline = replace(pipeline, size=data.low_res_size, padding=0)
        if data.shrink_size and epoch < data.shrink_epochs:
            pipeline = replace(pipeline, shrink=data.shrink_size)
        return pipeline

    def as_tested(self, data, epochs: int) -> Pipeline:
        """The pipeline a network trained ``epochs`` epochs is tested through: the windows of its last
        training epoch (the paper's ten patches are windows of the training size: 224 of 256, or 28 of
        the 32x32 CIFAR images when the run trained on 28x28 windows, not on padded 32x32 crops),
        never shrunk."""
        return replace(self.for_epoch(data, epochs - 1), shrink=0)

    # ------------------------------------------------------------------ training

    def train(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crops and mirrors on uint8, then the float steps. Random numbers come from the CPU
        ``generator`` in a fixed order (crop offsets, flips, lighting), so a seed gives the same
        batch on every device."""
        images = self.at_stored(images)
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
        if self.mean_kind == "channel":
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

    def at_stored(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images at the stored side: as they are, or (stored at another side: 256x256 prepared photos
        for a network that was trained on 32x32 CIFAR-10 images, say) the whole image resized, antialiased."""
        if images.shape[-2:] == (self.stored, self.stored):
            return images
        x = F.interpolate(images.float(), size=(self.stored, self.stored), mode="bilinear", antialias=True,
                          align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8)

    def window(self, images: torch.Tensor) -> torch.Tensor:
        """The uint8 centre window of each image that the network sees in evaluation (what figures show)."""
        return views(self.at_stored(images), 1, self._eval_size(1))

    def eval_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) stored images -> float (N, 3, size, size): the one-view network input."""
        return self.eval_inputs(images, 1)[0]

    def eval_inputs(self, images: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
        """uint8 (N, 3, H, W) stored images -> ``count`` float views of each (``views.COUNTS``) as
        batches for the network, each image-major (image i's views are rows i*k ... i*k + k - 1 of a
        batch of k views per image); every count but 4 is one batch.

        ``count=4`` (CIFAR-10, where the network takes both sizes: 28 and 32 give the same pool5 map):
        two batches, the whole images and their mirrors, then the centre ``size`` windows (the
        training window) and their mirrors. Two scales of one image: on the 10-epoch demo network
        0.7-0.9 points below the whole image and its mirror, for 1.8x that pass's work.
        """
        check_images(images)
        if why := test_views.refusal(self.kind, count):
            raise ValueError(f"{count} views: {why}")
        images = self.at_stored(images)
        if count == 4:
            whole = self._float_views(images, 2, None)  # a window as large as the image: the same two views
            return (whole,) if self.size >= self.stored else (whole, self._float_views(images, 2, self.size))
        return (self._float_views(images, count, self._eval_size(count)),)

    def eval_side(self) -> int:
        """The side of the centre view the network is tested on (``window``): the input size, or CIFAR-10's
        whole stored image."""
        return self._eval_size(1) or self.stored

    def _eval_size(self, count: int) -> int | None:
        """The side of the test views: cifar10 shows the whole image (None) except for the ten patches."""
        return None if self.kind == "cifar10" and count != 10 else self.size

    def _float_views(self, images: torch.Tensor, count: int, size: int | None) -> torch.Tensor:
        """``count`` views of each image at ``size`` (None: the whole image), minus the mean, as floats.
        The ten patches of a network trained on padded crops are cut from the image padded the same way."""
        if count == 10 and self.padding:
            images = F.pad(images, (self.padding,) * 4)
        x = views(images, count, size)
        mean = self.mean
        if self.mean_kind == "image":  # each view minus its own window of the mean image
            mean = views(mean[None], count, size)
            mean = mean.expand(len(images), *mean.shape).flatten(0, 1) if count > 1 else mean
        return self._to_float(x, mean, None)


def check_images(images) -> None:
    """Refuse, in one line, what is not a batch of stored uint8 RGB images (N, 3, H, W): a PIL image, a lone
    image, channels last, or floats (already normalised, or 0..1) that would be taken for pixels."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"the pipeline takes uint8 images as a tensor (N, 3, H, W); got {type(images).__name__}: "
                        "torchvision.transforms.functional.pil_to_tensor(image)[None] makes one of a PIL image")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"the pipeline takes uint8 images (N, 3, H, W); got shape {tuple(images.shape)}"
                         + (": add the batch dimension, images[None]" if images.dim() == 3 else ""))
    if images.dtype != torch.uint8:
        raise TypeError(f"the pipeline takes uint8 pixels 0..255; got {images.dtype}: for floats in 0..1 pass "
                        "(images * 255).round().to(torch.uint8)")


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
        # CIFAR-10's images are 32x32; a network with a larger input (the paper's network saved without a
        # pipeline, whose config says nothing of its data) sees image files brought to its input size.
        stored = max(CIFAR_SIDE, size)
        return Pipeline(kind=kind, size=size, stored=stored, padding=d.crop_padding, flip=d.flip, mean=mean,
                        mean_kind="channel", std=std, lighting=lighting, channels_last=channels_last)
    stats = data.stats
    if stats is None:  # a prepared folder of val/ photos alone, and a checkpoint saved without its pipeline
        raise UsageError("the data has no train split, so no statistics to build the input pipeline from; give "
                         "--data with train/ images too, or a checkpoint that stores its pipeline")
    lighting = None
    if d.pca_std and training:
        lighting = Lighting(lighting_magnitude(stats["eigval"], d.pca_scale), stats["eigvec"], d.pca_std)
    std = channel_std(stats).view(3, 1, 1) if d.standardize else None
    mean = stats["mean_image"].float()
    return Pipeline(kind=kind, size=size, stored=mean.shape[-1], flip=d.flip, mean=mean, mean_kind="image", std=std,
                    lighting=lighting, channels_last=channels_last, resize=d.resize)


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
