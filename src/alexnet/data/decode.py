"""Decoding any image file to RGB uint8, robustly: shared by the CIFAR-10 and ImageNet readers.

torchvision decodes first (the format is sniffed from the bytes, so a PNG named .JPEG is fine;
CMYK, grayscale and RGBA become RGB; EXIF orientation is not applied); PIL decides what
torchvision cannot read and explains why a file is bad (``BadImage`` with a short reason).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm",
                            ".tif", ".tiff"})


class BadImage(ValueError):
    """A file that is not a usable image; the message is the reason written to report.json."""


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def decode_rgb(data: bytes) -> torch.Tensor:
    """Encoded bytes -> uint8 (3, H, W) RGB, stored pixel order (EXIF orientation ignored)."""
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise BadImage("empty file")
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


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
               (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(data: bytes) -> str | None:
    """The image format that ``data``'s first bytes announce, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)


def _decode_with_pil(data: bytes, first_error: Exception) -> torch.Tensor:
    """Decode with PIL after torchvision failed; raise BadImage with the best reason."""
    from PIL import Image, UnidentifiedImageError

    kind = _signature(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        if kind is None:
            raise BadImage(f"not an image ({_describe_content(data)})") from None
        raise BadImage(f"corrupt {kind} data ({reason(first_error)})") from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError ... for damaged data
        said = f"{first_error} {error}".lower()
        if "truncat" in said or "incomplete" in said:
            raise BadImage(f"truncated {kind or 'image'} data") from None
        raise BadImage(f"corrupt {kind or 'image'} data ({reason(error)})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _describe_content(data: bytes) -> str:
    """``text`` for printable data, else the first bytes in hex."""
    head = data[:512]
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
