"""Using a trained network on image files: decoding any file a user brings, and the class ranking.

``decode_file(data, pipeline)`` turns the bytes of any file Pillow opens into the uint8 image the
checkpoint's pipeline starts from (``Pipeline.stored`` a side): the format is read from the bytes
(a PNG named .JPEG is fine), EXIF orientation is applied, CMYK, grayscale and palette images
become RGB and transparent pixels are laid on white; then the centre square is resized to the
stored side (``resize="center"``, as ``alexnet prepare`` does) or the whole image is
(``resize="squash"``, as Caffe's ImageNet data). Images over ``max_pixels`` are refused before
they are decoded (decompression bombs). A bad file raises ``BadImage`` with a one-line reason.

``Predictor`` holds a checkpoint's network, pipeline and class list on a device, and turns a
batch of such images into probabilities and top-k records ``{"index", "wnid", "name", "prob"}``;
``alexnet predict``, ``alexnet retrieve`` and ``alexnet serve`` all go through it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .data.decode import BadImage, _describe_content, quiet_decoders, reason, resize_center_crop
from .data.pipeline import Pipeline
from .errors import UsageError
from .runtime import autocast

MAX_PIXELS = 89_478_485  # Pillow's own warning threshold: about 0.25 GB of RGBA pixels


def decode_file(data: bytes, pipeline: Pipeline, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The bytes of an image file -> uint8 (3, S, S), S = ``pipeline.stored`` (see the module docstring)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadImage("empty file")
    side = pipeline.stored
    try:
        with quiet_decoders(), Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} "
                               "(a decompression bomb?)")
            if image.format == "JPEG":  # DCT scaling: decode at 1/2, 1/4, 1/8 while both sides stay >= side
                image.draft("RGB", (side, side))
            rgb = _to_rgb(ImageOps.exif_transpose(image))
            pixels = np.asarray(rgb).copy()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"not an image Pillow can read ({_describe_content(data)})") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"refused as a decompression bomb ({reason(error)})") from None
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError ... for damaged files
        said = reason(error)
        kind = "truncated" if "truncat" in said.lower() else "damaged"
        raise BadImage(f"{kind} image data ({said})") from None
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    return to_stored(image, pipeline)


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
    side = pipeline.stored
    if pipeline.resize == "squash":  # Caffe's data: the whole image to side x side, aspect ignored
        if tuple(image.shape[1:]) == (side, side):
            return image.contiguous()
        out = F.interpolate(image[None].float(), size=(side, side), mode="bilinear", antialias=True,
                            align_corners=False)
        return out[0].round().clamp(0, 255).to(torch.uint8).contiguous()
    return resize_center_crop(image, side).contiguous()


@dataclass
class Predictor:
    """A checkpoint's network ready for images: ``probabilities`` of uint8 stored images, batched."""

    model: torch.nn.Module  # eval mode, on ``device``
    pipeline: Pipeline  # on ``device``
    classes: list[dict]  # [{"index", "wnid", "name"}], one per output
    device: torch.device
    precision: str = "fp32"
    batch_size: int = 64  # images per forward pass (x crops views)

    @classmethod
    def from_run(cls, loaded, device: torch.device | str = "cpu", batch_size: int = 64) -> Predictor:
        """A ``run.LoadedRun`` made ready on ``device``; its class list or, where the checkpoint has
        none, the outputs' indices."""
        device = torch.device(device)
        if loaded.pipeline is None:
            raise UsageError(f"checkpoint {loaded.path} stores no input pipeline (written before they did); "
                             "evaluate it with alexnet eval --data, or retrain")
        outputs = loaded.config.model.num_classes
        classes = loaded.classes or [{"index": i, "wnid": str(i), "name": str(i)} for i in range(outputs)]
        precision = loaded.config.train.precision if device.type == "cuda" else "fp32"
        return cls(loaded.model.to(device).eval(), loaded.pipeline.to(device), classes, device, precision, batch_size)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, crops: int = 1) -> torch.Tensor:
        """uint8 (N, 3, S, S) stored images -> float (N, classes) softmax on the CPU, averaged over
        ``crops`` views (1: the centre, 10: the paper's ten patches)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            x = self.pipeline.evaluate(images[start:start + self.batch_size].to(self.device), crops)
            with autocast(self.device, self.precision):
                probs = self.model(x).float().softmax(1)
            out.append(probs.view(-1, crops, probs.shape[1]).mean(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def top(self, probs: torch.Tensor, k: int = 5) -> list[list[dict]]:
        """The ``k`` most probable classes of each row of ``probs``, most probable first."""
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[{"index": i, "wnid": self.classes[i]["wnid"], "name": self.classes[i]["name"], "prob": round(p, 6)}
                 for i, p in zip(row_i, row_p)] for row_i, row_p in zip(indices.tolist(), values.tolist())]


def add_parser(commands) -> None:
    p = commands.add_parser("predict", help="(not available yet)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise UsageError("alexnet predict is not available yet")
