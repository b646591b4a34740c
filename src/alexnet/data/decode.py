"""Decoding any image file to RGB uint8, robustly: shared by the CIFAR-10 and ImageNet readers.

torchvision decodes first (the format is sniffed from the bytes, so a PNG named .JPEG is fine;
CMYK, grayscale and RGBA become RGB; EXIF orientation is not applied); PIL decides what
torchvision cannot read and explains why a file is bad (``BadImage`` with a short reason).

How an image becomes 256x256 (``decode_stored``), fastest first:

1. A JPEG is decoded by ``simplejpeg`` (libjpeg-turbo) with DCT-domain scaling: at 1/2, 1/4 or
   1/8 size, the smallest of these whose shorter side is still >= 256 (a 2000x1500 photo decodes
   at 500x375, about 1.7x faster; a typical 500x375 ImageNet photo decodes at full size).
   Only power-of-two scales are used: libjpeg-turbo's 3/4, 5/8 ... scales are slower than a full
   decode. CMYK/YCCK JPEGs, damaged ones and everything else take step 2.
2. Otherwise torchvision's decoder (``ImageReadMode.RGB``), then PIL for what it cannot read.
3. The centre square (side = the shorter side) is resized to 256x256 with antialiased bilinear
   interpolation (``torch.nn.functional.interpolate``, uint8, channels-last). This is the same
   window as "shorter side to 256, then the centre 256x256" to within a pixel, and resizes 25%
   fewer pixels for a 4:3 photo.

Image handling: CMYK, grayscale, palette and RGBA images become RGB (torchvision's decoder with
``ImageReadMode.RGB``, PIL's ``convert("RGB")`` for what it cannot read, 16-bit PNGs scaled to
8 bits); the format is sniffed from the bytes, so a PNG named ``.JPEG`` is fine. **EXIF
orientation is not applied**: images keep their stored pixel order, as in ImageNet's official
pipeline and torchvision's default. Truncated, corrupt, empty and non-image
files raise ``BadImage`` with the reason.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

try:
    import simplejpeg
except ImportError:  # pragma: no cover - torchvision decodes everything then
    simplejpeg = None

STORED_SIZE = 256  # the side of a prepared image (section 2: shorter side 256, centre 256x256)
# .jpe and .jfif are JPEG's other names; .heic/.heif (phones) are listed so that such photos are reported
# as unreadable (Pillow needs a plugin for them) rather than left out without a word.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm",
                            ".tif", ".tiff", ".avif", ".heic", ".heif"})
# Folders that hold no photos of their own: macOS's zip resource forks, Synology's thumbnails, the
# bins and lost files of a disk. Like hidden folders they are neither classes nor searched for images.
SYSTEM_FOLDERS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found"})
MAX_PIXELS = 89_478_485  # Pillow's own warning threshold: about 0.25 GB of RGBA pixels; more is refused undecoded


class BadImage(ValueError):
    """A file that is not a usable image; the message is the reason written to report.json."""


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def is_skipped_folder(name: str) -> bool:
    """A hidden or system folder (``SYSTEM_FOLDERS``): never a class, never searched for images."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def walk(folder: Path):
    """``os.walk`` of ``folder`` following links (a class folder may be a link), hidden and system folders left
    out, and each real folder entered once: a link to a folder above does not list its photos again and again."""
    seen, top = set(), os.path.realpath(folder)
    for where, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(where)
        if real in seen or top.startswith(real + os.sep):  # entered before, or a link up to a folder above
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not is_skipped_folder(d)]
        yield where, files


def image_paths(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, see ``walk``), sorted."""
    return sorted(Path(where) / name for where, files in walk(folder) for name in files if is_image_name(name))


def check_pixels(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse (``BadImage``) an image too large to decode safely, before its pixels are allocated."""
    if width * height > max_pixels:
        raise BadImage(f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} "
                       "(a decompression bomb?)")


def decode_rgb(data: bytes) -> torch.Tensor:
    """Encoded bytes -> uint8 (3, H, W) RGB, stored pixel order (EXIF orientation ignored)."""
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise BadImage("empty file")
    _check_header(data)
    try:
        with quiet_decoders():
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                 apply_exif_orientation=False)
    except RuntimeError as error:  # a format torchvision lacks, or damaged data: PIL decides
        with quiet_decoders():
            image = _decode_with_pil(data, error)
    if image.dim() == 4:  # an animated GIF: the first frame
        image = image[0]
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    if image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
        raise BadImage(f"unexpected decoded shape {tuple(image.shape)}")
    return image


def decode_stored(data: bytes, size: int = STORED_SIZE, resize: str = "center") -> torch.Tensor:
    """Encoded image bytes -> uint8 (3, ``size``, ``size``) RGB: the centre square resized (``resize="squash"``:
    the whole image, as Caffe's ImageNet data), what ``alexnet prepare`` stores (256) and what a file
    becomes before a network's input pipeline.

    The result may be channels-last in memory (see ``resize_center_crop``). Raises ``BadImage``
    with a short reason for empty, truncated, corrupt and non-image data.
    """
    pixels = _decode_jpeg_scaled(data, size)
    image = torch.from_numpy(pixels).permute(2, 0, 1) if pixels is not None else decode_rgb(data)
    return resize_squash(image, size) if resize == "squash" else resize_center_crop(image, size)


def _decode_jpeg_scaled(data: bytes, size: int) -> np.ndarray | None:
    """A JPEG as uint8 (H, W, 3) RGB, DCT-scaled by 1/2, 1/4 or 1/8 where the shorter side stays
    >= ``size``; ``None`` where simplejpeg is missing or cannot decode it exactly (CMYK, damaged data,
    not a JPEG): the general decoder then decides, and gives the reason for a bad file."""
    if simplejpeg is None or not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("Gray", "YCbCr", "RGB"):
        return None
    factor = 1
    while factor < 8 and min(height, width) // (2 * factor) >= size:
        factor *= 2
    # the pixels it decodes to, before they are allocated (a 108-megapixel phone photo decodes at 1/8)
    check_pixels(-(-width // factor), -(-height // factor))
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // factor),
                                      min_width=-(-width // factor), strict=True)
    except ValueError:
        return None


def resize_center_crop(image: torch.Tensor, size: int = STORED_SIZE) -> torch.Tensor:
    """The centre square of a uint8 (3, H, W) image resized to ``size`` x ``size`` (antialiased
    bilinear): shorter side to ``size``, then the centre crop, to within a pixel.

    The result is channels-last in memory (its ``permute(1, 2, 0)`` is a contiguous (H, W, 3)
    array, what JPEG encoders take); torch's uint8 antialiased resize is fastest that way too.
    """
    from torch.nn import functional as F

    height, width = image.shape[1:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    pixels = image[:, top:top + side, left:left + side].permute(1, 2, 0).contiguous()  # no copy if already so
    square = pixels[None].permute(0, 3, 1, 2)  # (1, 3, side, side), channels-last
    if side == size:
        return square[0]
    return F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def resize_squash(image: torch.Tensor, size: int = STORED_SIZE) -> torch.Tensor:
    """The whole uint8 (3, H, W) image resized to ``size`` x ``size`` (antialiased bilinear), its aspect
    ratio ignored: Caffe's ImageNet data (``resize="squash"``)."""
    from torch.nn import functional as F

    if tuple(image.shape[1:]) == (size, size):
        return image
    out = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def _check_header(data: bytes) -> None:
    """Refuse a decompression bomb from its header, before a decoder allocates its pixels; damaged headers are
    left to the decoders, which give the reason. PNG, GIF and JPEG sizes are read in microseconds (a CIFAR-10
    photo decodes in 0.2 ms), other formats' by Pillow, which reads only the header."""
    from PIL import Image

    kind = signature(data)
    try:
        if kind == "PNG":
            width, height = struct.unpack(">II", data[16:24])
        elif kind == "GIF":
            width, height = struct.unpack("<HH", data[6:10])
        elif kind == "JPEG" and simplejpeg is not None:
            height, width, *_ = simplejpeg.decode_jpeg_header(data)
        else:
            with quiet_decoders(), Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:
        raise BadImage(f"refused as a decompression bomb ({reason(error)})") from None
    except Exception:  # not an image Pillow knows, or a damaged one: decoding says why
        return
    check_pixels(width, height)


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
               (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def signature(data: bytes) -> str | None:
    """The image format that ``data``'s first bytes announce, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":  # ISO media: a phone's HEIC photo, or AVIF
        return "AVIF" if data[8:12] in (b"avif", b"avis") else "HEIC"
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)


def _decode_with_pil(data: bytes, first_error: Exception) -> torch.Tensor:
    """Decode with PIL after torchvision failed; raise BadImage with the best reason."""
    from PIL import Image, UnidentifiedImageError

    kind = signature(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        if kind is None:
            raise BadImage(f"not an image ({describe_content(data)})") from None
        if kind in UNSUPPORTED:
            raise BadImage(UNSUPPORTED[kind]) from None
        raise BadImage(f"corrupt {kind} data ({reason(first_error)})") from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError ... for damaged data
        said = f"{first_error} {error}".lower()
        if "truncat" in said or "incomplete" in said:
            raise BadImage(f"truncated {kind or 'image'} data") from None
        raise BadImage(f"corrupt {kind or 'image'} data ({reason(error)})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


UNSUPPORTED = {"HEIC": "a HEIC photo, which Pillow reads only with the pillow-heif plugin; convert it to JPEG",
               "AVIF": "an AVIF image this Pillow cannot read; convert it to JPEG"}
_ARCHIVES = ((b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "gzip data (a .tar.gz?)"),
             (b"7z\xbc\xaf", "a 7-Zip archive"))


def describe_content(data: bytes) -> str:
    """``text`` for printable data, an archive's kind, else the first bytes in hex."""
    head = data[:512]
    archive = next((kind for magic, kind in _ARCHIVES if head.startswith(magic)), None)
    if archive is None and data[257:262] == b"ustar":
        archive = "a tar archive"
    if archive is not None:
        return f"{archive}: extract it and pass the folder"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "text"
    return f"unrecognised content starting {head[:8].hex()}"


def reason(error: BaseException | str) -> str:
    """A short one-line reason for an exception (drops torchvision's C++ source location)."""
    text = str(error).strip()
    text = re.sub(r"^.*?\.cpp:\d+, ", "", text.splitlines()[0]) if text else type(error).__name__
    return text[:160]


class quiet_decoders(warnings.catch_warnings):
    """Silence per-call codec warnings (torchvision's deprecation, PIL's EXIF and bomb notes)."""

    def __enter__(self):
        result = super().__enter__()
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.")
        warnings.filterwarnings("ignore", module=r"PIL\.")
        return result
