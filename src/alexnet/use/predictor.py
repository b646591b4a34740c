"""A trained network ready for images: class probabilities, features and top-k records.

``Predictor`` holds a checkpoint's network, pipeline and class list on a device and turns batches
of stored uint8 images (``data.images.decode_file`` makes them from files) into probabilities
averaged over any number of views (``data/views.py``), features at any tap, and top-k records
``{"index", "wnid", "name", "prob"}``. ``alexnet predict``, ``retrieve``, ``figures`` and ``serve``
all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import views as test_views
from ..data.pipeline import Pipeline, check_images
from ..errors import UsageError
from ..runs.load import LoadedRun, load_run
from ..runtime import autocast, pick_device
from .evaluate import mean_softmax
from .inference import Settings, choose, fast, ready


@dataclass
class Predictor:
    """A checkpoint's network ready for images: ``probabilities`` of uint8 stored images, batched."""

    model: torch.nn.Module  # eval mode, on ``device``
    pipeline: Pipeline  # on ``device``
    classes: list[dict]  # [{"index", "wnid", "name"}], one per output
    device: torch.device
    settings: Settings = Settings()  # precision, layout, LRN kernels (``use/inference.py``)
    batch_size: int = 64  # images per forward pass (x views)
    net: torch.nn.Module | None = None  # what the forward passes run (``inference.fast``); None: ``model``

    def __post_init__(self):
        self.net = self.model if self.net is None else self.net

    @property
    def precision(self) -> str:
        return self.settings.precision

    @classmethod
    def from_onnx(cls, path: Path, batch_size: int = 64, info: dict | None = None) -> Predictor:
        """An exported ``.onnx`` file (float32 or int8) on the CPU through onnxruntime, with the classes and
        preprocessing of its metadata (``onnx_model.py``; ``info``: that metadata where the caller read it)."""
        from .export import read_info
        from .onnx_model import OnnxModel, classes_from_info, pipeline_from_info

        info = info if info is not None else read_info(path)
        model = OnnxModel(path)
        outputs = int(info.get("model", {}).get("num_classes") or len(info.get("classes") or []))
        return cls(model, pipeline_from_info(info, path), classes_from_info(info, outputs), torch.device("cpu"),
                   Settings(), batch_size)

    @classmethod
    def from_run(cls, loaded: LoadedRun, device: torch.device | str = "cpu", batch_size: int = 64,
                 settings: Settings | None = None) -> Predictor:
        """A ``LoadedRun`` made ready on ``device``: its class list or, where the checkpoint has none, the
        outputs' indices. ``settings``: how the network runs (default: ``inference.choose`` for a
        long-lived use, e.g. bf16, channels_last and the compiled LRN on this CPU)."""
        try:
            device = pick_device(str(device))
        except UsageError:
            raise UsageError(f"device {str(device)!r} is not usable here; use 'cpu', or 'cuda' where a GPU is "
                             "visible") from None
        settings = settings or choose(device, None)
        if loaded.pipeline is None:
            raise UsageError(f"checkpoint {loaded.path} stores no input pipeline and its network needs the training "
                             "data's mean image; evaluate it with alexnet eval --data, or save it with its pipeline")
        outputs = loaded.config.model.num_classes
        loaded.check_names()
        classes = loaded.classes or [{"index": i, "wnid": str(i), "name": str(i)} for i in range(outputs)]
        model = ready(loaded.model, device, settings)
        return cls(model, loaded.pipeline.to(device), classes, device, settings, batch_size, fast(model, settings))

    def warm_up(self, views: int = 1) -> None:
        """Run a batch once, so that the first caller waits neither for the LRN's kernels to compile nor for
        the first forward pass's set-up (a server, before it listens)."""
        side = self.pipeline.stored
        self.probabilities(torch.zeros(2, 3, side, side, dtype=torch.uint8), views)

    def decode_ahead(self, images: int = 512) -> int:
        """Batches worth decoding ahead of the network (``read_batches``): about ``images`` while a compiled
        LRN compiles on its first batch (seconds), else the next one."""
        return max(1, images // self.batch_size) if self.settings.lrn == "compiled" else 1

    def refusal(self, views: int) -> str | None:
        """Why this network cannot be tested on ``views`` views of each image, or None. An exported file takes
        one input side: views of another (a CIFAR-10 network's 28x28 windows of its 32x32 images) are refused."""
        if why := test_views.refusal(self.pipeline.kind, views):
            return why
        if others := self._other_sides(views):
            fits = [n for n in test_views.COUNTS if test_views.refusal(self.pipeline.kind, n) is None
                    and not self._other_sides(n)]
            return (f"the exported file takes {self.net.side}x{self.net.side} inputs only and {views} views include "
                    f"{min(others)}x{min(others)} ones; use {' or '.join(map(str, fits))} views, or the checkpoint")
        return None

    def _other_sides(self, views: int) -> set[int]:
        """The input sides of ``views`` views that an exported file of one fixed side cannot take."""
        side = getattr(self.net, "side", None)
        if side is None:
            return set()
        probe = torch.zeros(1, 3, self.pipeline.stored, self.pipeline.stored, dtype=torch.uint8)
        return {b.shape[-1] for b in self.pipeline.eval_inputs(probe, views)} - {side}

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, views: int = 1) -> torch.Tensor:
        """uint8 (N, 3, S, S) stored images -> float (N, classes) softmax on the CPU, averaged over
        ``views`` views of each image (``data/views.py``)."""
        check_images(images)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size].to(self.device)
            doubled = self._two(chunk)
            batches = self.pipeline.eval_inputs(doubled, views)
            probs = mean_softmax([self.net], batches, len(doubled), self.device, self.precision)
            out.append(probs[:len(chunk)].cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    @torch.no_grad()
    def features(self, images: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        """uint8 (N, 3, S, S) stored images -> float32 (N, D) activations at ``layer`` on the CPU, of the
        centre view as in evaluation (``AlexNet.features``), flattened."""
        check_images(images)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size].to(self.device)
            x = self.pipeline.eval_input(self._two(chunk))
            with autocast(self.device, self.precision):
                out.append(self.net.features(x, layer)[:len(chunk)].float().flatten(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def _two(self, images: torch.Tensor) -> torch.Tensor:
        """A lone image doubled under the compiled LRN, whose kernels specialise batch 1 apart (seconds of
        compiling for it); as it is with the eager kernels."""
        if len(images) == 1 and self.settings.lrn == "compiled":
            return images.expand(2, *images.shape[1:])
        return images

    def top(self, probs: torch.Tensor, k: int = 5) -> list[list[dict]]:
        """The ``k`` most probable classes of each row of ``probs``, most probable first."""
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[self.record(i, p) for i, p in zip(row_i, row_p)]
                for row_i, row_p in zip(indices.tolist(), values.tolist())]

    def record(self, index: int, prob: float) -> dict:
        """Output ``index`` with probability ``prob``: ``{"index", "wnid", "name", "prob"}``."""
        c = self.classes[index]
        return {"index": index, "wnid": c["wnid"], "name": c["name"], "prob": round(float(prob), 6)}


def load_predictor(checkpoint: Path, device: str = "auto", batch_size: int = 64, work: int | None = None,
                   precision: str = "auto") -> Predictor:
    """The checkpoint's network on ``device`` (auto: the GPU if there is one), batched by ``batch_size``, set
    up for ``work`` images x views (None: a server's any amount) in ``precision`` (``inference.choose``)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1; got {batch_size}")
    try:
        where = pick_device(device)
    except (UsageError, RuntimeError):
        raise UsageError(f"--device {device}: not a usable device here; use auto, cpu, or cuda where a GPU "
                         "is visible") from None
    if Path(checkpoint).suffix == ".onnx":  # an exported file: onnxruntime on the CPU, nothing of the training side
        return Predictor.from_onnx(Path(checkpoint), batch_size)
    settings = choose(where, work, precision)  # an unknown --precision is refused before the file is read
    return Predictor.from_run(load_run(checkpoint), where, batch_size, settings)
