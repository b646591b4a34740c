"""Image files a user brings -> the stored uint8 images a network's pipeline starts from.

``decode_file(data, pipeline)`` turns the bytes of any file Pillow opens into the uint8 image the
pipeline starts from (``Pipeline.stored`` a side): the format is read from the bytes (a PNG named
.JPEG is fine), EXIF orientation is applied, CMYK, grayscale and palette images become RGB and
transparent pixels are laid on white; then the centre square is resized to the stored side
(``resize="center"``, as ``alexnet prepare`` does) or the whole image is (``resize="squash"``, as
Caffe's ImageNet data). Images over ``max_pixels`` are refused before they are decoded
(decompression bombs). A bad file raises ``BadImage`` with a one-line reason.

``image_files`` lists the files and folders a command was given; ``read_batches`` decodes them a
batch at a time in threads, the next batch while the caller uses this one. ``predict``, ``retrieve``,
``figures`` and ``serve`` read files this way; ``explain`` also decodes each photo whole (``read_photo``):
its maps are of the photo's own size.
"""

from __future__ import annotations

import collections
import functools
import io
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..runtime import worker_count
from .decode import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    UNSUPPORTED,
    BadImage,
    check_pixels,
    describe_content,
    image_paths,
    quiet_decoders,
    reason,
    resize_center_crop,
    resize_squash,
    signature,
)
from .pipeline import Pipeline


def decode_file(data: bytes, pipeline: Pipeline, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The bytes of an image file -> uint8 (3, S, S), S = ``pipeline.stored`` (see the module docstring)."""
    return to_stored(decode_photo(data, max_pixels, draft=pipeline.stored), pipeline)


def decode_photo(data: bytes, max_pixels: int = MAX_PIXELS, draft: int | None = None) -> torch.Tensor:
    """The bytes of an image file -> the photo as uint8 (3, H, W), RGB, upright (EXIF orientation applied);
    ``draft``: a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size while both sides stay >= ``draft``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadImage("empty file")
    try:
        with quiet_decoders(), Image.open(io.BytesIO(data)) as image:
            check_pixels(*image.size, max_pixels)
            if image.format == "JPEG" and draft:  # DCT scaling: 1/2, 1/4, 1/8 while both sides stay >= draft
                image.draft("RGB", (draft, draft))
            rgb = _to_rgb(ImageOps.exif_transpose(image))
            pixels = np.asarray(rgb).copy()
    except BadImage:
        raise
    except UnidentifiedImageError:
        kind = signature(data)
        if kind is None:
            raise BadImage(f"not an image Pillow can read ({describe_content(data)})") from None
        if kind in UNSUPPORTED:
            raise BadImage(UNSUPPORTED[kind]) from None
        raise BadImage(f"{_damage(data, kind)} {kind} data (Pillow cannot read its header)") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"refused as a decompression bomb ({reason(error)})") from None
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError ... for damaged files
        said, kind = reason(error), signature(data)
        damage = "truncated" if "truncat" in said.lower() else _damage(data, kind)
        raise BadImage(f"{damage} {kind or 'image'} data ({said})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND", "GIF": b";"}  # what a complete file ends with


def _damage(data: bytes, kind: str | None) -> str:
    """``truncated`` where a file announcing ``kind`` lacks the marker a complete one ends with, else ``corrupt``."""
    end = _END_MARKERS.get(kind)
    return "truncated" if end is not None and end not in data[-16:] else "corrupt"


def _to_rgb(image):
    """RGB, with any transparency laid on white (a logo's transparent background is not black)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def to_stored(image: torch.Tensor, pipeline: Pipeline) -> torch.Tensor:
    """A uint8 (3, H, W) image brought to the pipeline's stored side, contiguous."""
    resize = resize_squash if pipeline.resize == "squash" else resize_center_crop  # Caffe's data | the paper's
    return resize(image, pipeline.stored).contiguous()


def image_files(inputs: list[Path]) -> tuple[list[Path], bool]:
    """The files named and the image files under the folders named (recursively, sorted), in the
    order given; and whether any folder was named. A path that does not exist stays in the list (it
    gets an error record); a folder without images is refused."""
    files, folders = [], False
    for path in inputs:
        if path.is_dir():
            found = [p for p in image_paths(path) if p.is_file()]  # hidden and system folders left out
            if not found:
                raise UsageError(f"{path}: no image files in this folder (looked for "
                                 f"{', '.join(sorted(IMAGE_SUFFIXES))}); name image files or pass them one by one")
            files += found
            folders = True
        else:
            files.append(path)
    return files, folders


@dataclass
class Batch:
    """Some files read and decoded: ``images`` holds the readable ones, in order."""

    files: list[Path]
    errors: list[str | None]  # per file: why it could not be read, or None
    images: torch.Tensor  # uint8 (readable files, 3, S, S)
    say: Callable[[str], None]  # a stderr line that does not break the progress bar


def read_batches(files: list[Path], pipeline: Pipeline, batch_size: int, progress: str | None = None,
                 workers: int | None = None, ahead: int = 1) -> Iterator[Batch]:
    """``files`` decoded (``decode_file``) ``batch_size`` at a time by a pool of threads (Pillow
    releases the GIL), the next ``ahead`` batches decoding while the caller uses this one (more: while
    it compiles, say); a tqdm bar named ``progress`` on stderr unless None."""
    from tqdm import tqdm

    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    side = pipeline.stored
    with ThreadPoolExecutor(worker_count(workers)) as pool, \
            tqdm(total=len(files), desc=progress, unit="img", file=sys.stderr, disable=progress is None) as bar:
        say = functools.partial(tqdm.write, file=sys.stderr)
        pending = collections.deque([pool.submit(read_image, path, pipeline) for path in chunk]
                                    for chunk in chunks[:1 + ahead])
        for i, chunk in enumerate(chunks):
            results = [f.result() for f in pending.popleft()]
            if i + 1 + ahead < len(chunks):
                pending.append([pool.submit(read_image, path, pipeline) for path in chunks[i + 1 + ahead]])
            images = [r for r in results if isinstance(r, torch.Tensor)]
            errors = [None if isinstance(r, torch.Tensor) else r for r in results]
            stacked = torch.stack(images) if images else torch.zeros(0, 3, side, side, dtype=torch.uint8)
            yield Batch(chunk, errors, stacked, say)
            bar.update(len(chunk))


def read_image(path: Path, pipeline: Pipeline) -> torch.Tensor | str:
    """One file decoded to the pipeline's stored image, or the one-line reason it cannot be."""
    return _read(path, lambda data: decode_file(data, pipeline))


def read_photo(path: Path, pipeline: Pipeline) -> tuple[torch.Tensor, torch.Tensor] | str:
    """One file as the stored image ``predict`` makes of it and the whole photo (``decode_photo``: its own
    size, upright), or the one-line reason it cannot be read."""
    return _read(path, lambda data: (decode_file(data, pipeline), decode_photo(data)))


def _read(path: Path, decode: Callable[[bytes], torch.Tensor]) -> torch.Tensor | str:
    try:
        return decode(path.read_bytes())
    except BadImage as error:
        return str(error)
    except OSError as error:  # missing, a folder, no permission
        return error.strerror or type(error).__name__
