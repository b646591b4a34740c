"""Batch operations on uint8 images (N, 3, H, W), run on whatever device the batch is on.

Each function is pure and does one thing; ``pipeline.py`` puts them in order for each dataset
kind (the training and evaluation pipelines are written out there). The paper's training crops
(section 4.1): random 224x224 windows of the 256x256 stored images and their mirrors, cut on
uint8; the mean image is cut at the same window and mirrored the same way, so the result equals
cropping the mean-subtracted 256x256 image, as the paper does::

    dy, dx = random_crop_offsets(n, 256, 256, 224, generator)
    flip = random_flips(n, generator)
    x = flip_where(crop_at(x, dy, dx, 224), flip)                                  # uint8
    x = subtract_mean_image(x, flip_where(crop_at(mean_image, dy, dx, 224), flip))  # float, 0..255
    x = pca_lighting(x, magnitude, eigvec, generator)                              # float

At test time ``views(x, count, 224)``: the centre window, it and its mirror, or ``ten_crop``.

Random numbers come from an explicit ``torch.Generator`` on the CPU, so a seed gives the
same crops, flips and lighting on every device.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_crop(images: torch.Tensor, size: int, padding: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` window of each image after zero-padding by ``padding`` pixels."""
    if padding:
        images = F.pad(images, (padding,) * 4)
    n, _, h, w = images.shape
    if (h, w) == (size, size):
        return images
    dy, dx = random_crop_offsets(n, h, w, size, generator)
    return crop_at(images, dy.to(images.device), dx.to(images.device), size)


def random_crop_offsets(n: int, h: int, w: int, size: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top row ``dy`` and left column ``dx`` (CPU int64, shape (n,)) of a uniform random ``size``
    window in an ``h`` x ``w`` image; keep them to cut the mean image at the same window."""
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the {h}x{w} images")
    dy = torch.randint(0, h - size + 1, (n,), generator=generator)
    dx = torch.randint(0, w - size + 1, (n,), generator=generator)
    return dy, dx


def crop_at(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int) -> torch.Tensor:
    """Crop image i at row dy[i], column dx[i] (one gather for the whole batch on a GPU).

    ``images`` is (N, C, H, W), or one (C, H, W) image such as the mean image, which is then cut
    at every offset: the result is (len(dy), C, size, size) windows of that one image.
    """
    if images.dim() == 3:
        images = images.expand(len(dy), *images.shape)
    if images.device.type == "cpu":
        return _crop_copies(images, dy, dx, size)
    dy, dx = dy.to(images.device), dx.to(images.device)
    span = torch.arange(size, device=images.device)
    rows = (dy[:, None] + span)[:, None, :, None]
    cols = (dx[:, None] + span)[:, None, None, :]
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channel, rows, cols]


def _crop_copies(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int) -> torch.Tensor:
    """``crop_at`` on the CPU: one slice copy per image, about 4x faster there than the gather."""
    channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    out = torch.empty((len(dy), images.shape[1], size, size), dtype=images.dtype,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for i, (y, x) in enumerate(zip(dy.tolist(), dx.tolist())):
        out[i] = images[i, :, y:y + size, x:x + size]
    return out


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window (top-left at ((H - size) // 2, (W - size) // 2))."""
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top:top + size, left:left + size]


TEN_CROP_ORDER = ("top_left", "top_right", "bottom_left", "bottom_right", "center",
                  "top_left_mirror", "top_right_mirror", "bottom_left_mirror", "bottom_right_mirror",
                  "center_mirror")


def ten_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The paper's ten test patches (section 4.1): the four corner and the centre ``size`` windows
    and their horizontal reflections, (N, C, H, W) -> (N * 10, C, size, size), image-major.

    Rows 10*i .. 10*i + 9 are image i's views in ``TEN_CROP_ORDER``: view 5 + j is view j mirrored
    (torchvision's ``ten_crop`` instead crops the mirrored image, so its corners swap sides;
    the set of ten patches is the same). Works on uint8; cut the mean image with
    ``ten_crop(mean_image[None], size)`` to get the matching ten windows.
    """
    h, w = images.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the {h}x{w} images")
    five = torch.stack([images[..., :size, :size], images[..., :size, w - size:],
                        images[..., h - size:, :size], images[..., h - size:, w - size:],
                        center_crop(images, size)], dim=1)
    return torch.cat([five, five.flip(-1)], dim=1).flatten(0, 1)


CUTS = (1, 2, 10)  # the view counts cut in one piece (views.COUNTS' 4 is two of these: Pipeline.eval_inputs)


def views(images: torch.Tensor, count: int, size: int | None) -> torch.Tensor:
    """The test views of each image, image-major: (N, C, H, W) -> (N * count, C, size, size).

    ``count=1`` the centre window, ``2`` the centre and its mirror, ``10`` ``ten_crop`` (four
    corners, centre, then the same five mirrored). ``size=None`` keeps the whole image (not
    with ``count=10``, whose corners need a smaller window).
    """
    if count not in CUTS:
        raise ValueError(f"views are cut {', '.join(map(str, CUTS))} at a time; got {count}")
    h, w = images.shape[-2:]
    if size is not None and (size > h or size > w):
        raise ValueError(f"crop size {size} is larger than the {h}x{w} images")
    if count == 10:
        if size is None:
            raise ValueError("10 views need a crop size smaller than the images (the paper: 224 of 256)")
        return ten_crop(images, size)
    centre = images if size is None else center_crop(images, size)
    if count == 1:
        return centre
    return torch.stack([centre, centre.flip(-1)], dim=1).flatten(0, 1)


def random_flips(n: int, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Which of ``n`` images to mirror: a CPU bool mask, True with probability ``p``."""
    return torch.rand(n, generator=generator) < p


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose ``flip`` entry is True."""
    if images.device.type == "cpu":  # copy only the mirrored images: no full-batch select
        out = images.clone()
        for i in flip.nonzero().flatten().tolist():
            out[i] = images[i].flip(-1)
        return out
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


def flip_lr(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p (section 4.1's horizontal reflections)."""
    return flip_where(images, random_flips(images.shape[0], generator, p))


def normalize(images: torch.Tensor, mean, std, channels_last: bool = True) -> torch.Tensor:
    """uint8 0..255 -> float32 (x / 255 - mean) / std; mean and std per channel on the 0..1 scale."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    inv_std = 1.0 / (torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255)
    out = (images.float() - mean_t) * inv_std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()


def subtract_mean_image(images: torch.Tensor, mean_image: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 0..255 -> float32 ``images - mean_image``, the paper's only input normalisation
    (section 2: "subtracting the mean activity over the training set from each pixel"; no std).

    ``mean_image`` is float on the 0..255 scale: one (3, H, W) image for uncropped batches, or
    (N, 3, H, W) windows cut from the 256x256 mean at each image's crop offsets (``crop_at``,
    ``flip_where``, ``ten_crop``), so a 224 crop loses exactly its own window of the mean.
    """
    if mean_image.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"mean image is {tuple(mean_image.shape)} but the images are {tuple(images.shape)}; "
                         "cut the mean image at the images' crop windows first")
    out = images.float() - mean_image.to(images.device, torch.float32)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()


def rgb_eigen(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending; variances, not standard deviations) and eigenvectors (columns) of the
    3x3 RGB covariance of the pixels of uint8 (N, 3, H, W) images, on their 0..255 scale."""
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    eigval, eigvec = torch.linalg.eigh(torch.cov(pixels))
    return eigval.float(), eigvec.float()


def pca_lighting(images: torch.Tensor, magnitude: torch.Tensor, eigvec: torch.Tensor, generator: torch.Generator,
                 sigma: float = 0.1) -> torch.Tensor:
    """The paper's PCA colour augmentation (section 4.1, "fancy PCA") on a float batch.

    Adds ``sum_i alpha_i * magnitude[i] * eigvec[:, i]`` to every pixel of each image, with one
    ``alpha ~ N(0, sigma)`` (sigma a standard deviation; the paper's 0.1) drawn per image per call,
    so one call per batch per epoch redraws it as the paper does. ``eigvec`` columns are the
    eigenvectors p_i of the training pixels' 3x3 RGB covariance and ``magnitude`` the shift per unit
    alpha along each, on the images' scale (0..255): by default (``data.pca_scale="sqrt"``) the square
    roots of its eigenvalues, the pixel standard deviation along each p_i (``pipeline.lighting_magnitude``).

    Deviation, documented: the paper writes the eigenvalue lambda_i itself. On the 0..255 scale
    that shifts pixels by hundreds of levels (the largest lambda_i of the CIFAR-10 photos prepared
    at 256 is 10,641, a standard deviation of 103 levels); Krizhevsky's own cuda-convnet2
    (``convdata.py``: ``randn * pca_stdevs``) scales by the square root, a shift of a few levels for
    sigma 0.1. fb.resnet.torch and its ports use lambda_i itself, but of 0..1-scale pixels: on ImageNet
    about half the square root's shift along the first component and far less along the others
    (``data.pca_scale="fb"``).
    Random numbers come from the CPU ``generator``.
    """
    alpha = torch.randn(images.shape[0], 3, generator=generator, dtype=torch.float64) * sigma
    offset = (alpha * magnitude.double().cpu()) @ eigvec.double().cpu().T  # (N, 3): rgb shift per image
    return images + offset.to(images.device, images.dtype)[:, :, None, None]
