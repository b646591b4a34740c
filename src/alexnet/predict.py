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

import argparse
import functools
import io
import json
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .data.decode import BadImage, _describe_content, _signature, quiet_decoders, reason, resize_center_crop
from .checkpoint import unwrap
from .data.decode import IMAGE_SUFFIXES, is_image_name
from .data.pipeline import Pipeline
from .errors import UsageError
from .runtime import autocast, log, pick_device, worker_count

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
        kind = _signature(data)
        if kind is None:
            raise BadImage(f"not an image Pillow can read ({_describe_content(data)})") from None
        raise BadImage(f"{_damage(data, kind)} {kind} data (Pillow cannot read its header)") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"refused as a decompression bomb ({reason(error)})") from None
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError ... for damaged files
        said, kind = reason(error), _signature(data)
        damage = "truncated" if "truncat" in said.lower() else _damage(data, kind)
        raise BadImage(f"{damage} {kind or 'image'} data ({said})") from None
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    return to_stored(image, pipeline)


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
        from . import lrn

        lrn.compile_kernels(False)  # batches of any size: compiling LRN per new size costs seconds each
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

    @torch.no_grad()
    def features(self, images: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        """uint8 (N, 3, S, S) stored images -> float32 (N, D) activations of ``layer`` on the CPU
        (the centre view, as in evaluation; see ``features``)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            x = self.pipeline.evaluate(images[start:start + self.batch_size].to(self.device), 1)
            with autocast(self.device, self.precision):
                out.append(features(self.model, x, layer).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def top(self, probs: torch.Tensor, k: int = 5) -> list[list[dict]]:
        """The ``k`` most probable classes of each row of ``probs``, most probable first."""
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[{"index": i, "wnid": self.classes[i]["wnid"], "name": self.classes[i]["name"], "prob": round(p, 6)}
                 for i, p in zip(row_i, row_p)] for row_i, row_p in zip(indices.tolist(), values.tolist())]


LAYERS = ("pool5", "fc6", "fc7", "fc8")  # what ``features`` returns: pool5 flattened, fc6/fc7 after ReLU, fc8 logits


@torch.no_grad()
def features(model: torch.nn.Module, images: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
    """The activations of ``layer`` (one of ``LAYERS``) for a float input batch (the network's
    input, e.g. ``Pipeline.evaluate``'s): (N, D), hidden layers after their activation (ReLU).

    Always as in evaluation: no dropout, whatever the model's mode (which is left as it was), and
    no gradients. The paper's retrieval (section 6.1) uses fc7.
    """
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}; got {layer!r}")
    net = unwrap(model)
    x = net.features(images)  # conv1 ... pool5, flattened
    if layer == "pool5":
        return x
    # Dropout is skipped: the paper's sits after fc6/fc7's ReLU, torchvision's before fc6/fc7;
    # at test time both are the identity.
    x = net.act(_whole(net.fc6, x))
    if layer == "fc6":
        return x
    x = net.act(_whole(net.fc7, x))
    return x if layer == "fc7" else net.fc8(x)


def _whole(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A fully-connected layer on the whole input; the two-device split's halves (towers.Halves)
    are read as the whole layer (on the first device, where ``features`` gathers pool5)."""
    return layer(x) if isinstance(layer, torch.nn.Linear) else torch.nn.functional.linear(x, layer.weight, layer.bias)


# ---------------------------------------------------------------------------- alexnet predict

EXAMPLES = """examples:
  alexnet predict --checkpoint runs/demo/checkpoints/best.pt cat.jpg dog.png
  alexnet predict --checkpoint best.pt photos/ --json > predictions.jsonl   # every image under photos/
  alexnet predict --checkpoint best.pt photos/ --crops 10 --topk 3

Any file Pillow opens (the format is read from the bytes, EXIF orientation applied, CMYK, grayscale
and transparent images become RGB); folders are searched recursively for image files, in sorted
order. Each image goes through the checkpoint's own preprocessing. One line per image on stdout
(--json: one JSON object per line, {"file", "top": [{"index", "wnid", "name", "prob"}]} or
{"file", "error"}); a file that cannot be read gets a line on stderr and the others go on.
Exit status 1 when any file failed, 0 when all were predicted, 2 for bad usage.
"""


def add_parser(commands) -> None:
    p = commands.add_parser("predict", help="the most probable classes of image files", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|DIR", help="image files and folders of them")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument("--crops", type=int, choices=[1, 2, 10], default=1, help="views per image, softmax averaged: "
                   "1 the centre (default), 2 centre + mirror, 10 the paper's four corners + centre and mirrors")
    p.add_argument("--json", action="store_true", help="one JSON object per image per line (JSON Lines)")
    add_run_options(p)
    p.set_defaults(run=run)


def add_run_options(p) -> None:
    """--batch-size and --device, shared with ``alexnet retrieve``."""
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images decoded and run at once (default 64)")
    p.add_argument("--device", default="auto", help="auto (default: the GPU if there is one), cpu, cuda or cuda:N")


def run(args) -> int:
    if args.topk < 1:
        raise UsageError(f"--topk must be at least 1; got {args.topk}")
    predictor = load_predictor(args)
    files, folders = image_files(args.inputs)
    failed = 0
    for batch in read_batches(files, predictor.pipeline, args.batch_size, progress="predict" if folders else None):
        tops = iter(predictor.top(predictor.probabilities(batch.images, args.crops), args.topk))
        for path, error in zip(batch.files, batch.errors):
            record = {"file": str(path), "error": error} if error else {"file": str(path), "top": next(tops)}
            failed += bool(error)
            if error:
                batch.say(f"alexnet predict: {path}: {error}")
            if args.json:
                print(json.dumps(record), flush=True)
            elif not error:
                print(f"{path}  " + ", ".join(f"{t['name']} {t['prob']:.3f}" for t in record["top"]), flush=True)
    if failed:
        log(f"alexnet predict: {failed} of {len(files)} files could not be read")
    return 1 if failed else 0


def load_predictor(args) -> Predictor:
    """The checkpoint's network on ``--device`` (checked), batched by ``--batch-size``."""
    from .run import load_run

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1; got {args.batch_size}")
    try:
        device = pick_device(args.device)
    except (UsageError, RuntimeError):
        raise UsageError(f"--device {args.device}: not a usable device here; use auto, cpu, or cuda where a GPU "
                         "is visible") from None
    return Predictor.from_run(load_run(args.checkpoint), device, args.batch_size)


def image_files(inputs: list[Path]) -> tuple[list[Path], bool]:
    """The files named and the image files under the folders named (recursively, sorted), in the
    order given; and whether any folder was named. A path that does not exist stays in the list (it
    gets an error record); a folder without images is refused."""
    files, folders = [], False
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_image_name(p.name) and p.is_file())
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
                 workers: int | None = None) -> Iterator[Batch]:
    """``files`` decoded (``decode_file``) ``batch_size`` at a time by a pool of threads (Pillow
    releases the GIL), the next batch decoding while the caller uses this one; a tqdm bar named
    ``progress`` on stderr unless None."""
    from tqdm import tqdm

    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    side = pipeline.stored
    with ThreadPoolExecutor(worker_count(workers)) as pool, \
            tqdm(total=len(files), desc=progress, unit="img", file=sys.stderr, disable=progress is None) as bar:
        say = functools.partial(tqdm.write, file=sys.stderr)
        pending = [pool.submit(read_image, path, pipeline) for path in chunks[0]] if chunks else []
        for i, chunk in enumerate(chunks):
            results = [f.result() for f in pending]
            if i + 1 < len(chunks):
                pending = [pool.submit(read_image, path, pipeline) for path in chunks[i + 1]]
            images = [r for r in results if isinstance(r, torch.Tensor)]
            errors = [None if isinstance(r, torch.Tensor) else r for r in results]
            stacked = torch.stack(images) if images else torch.zeros(0, 3, side, side, dtype=torch.uint8)
            yield Batch(chunk, errors, stacked, say)
            bar.update(len(chunk))


def read_image(path: Path, pipeline: Pipeline) -> torch.Tensor | str:
    """One file decoded to the pipeline's stored image, or the one-line reason it cannot be."""
    try:
        return decode_file(path.read_bytes(), pipeline)
    except BadImage as error:
        return str(error)
    except OSError as error:  # missing, a folder, no permission
        return error.strerror or type(error).__name__
