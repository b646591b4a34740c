"""An exported ``.onnx`` file (float32 or int8) as a model: ``predict`` and ``serve`` take it in place of a
checkpoint, with the classes and preprocessing its metadata carries and an onnxruntime session, nothing
of the training side.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig, build_config
from ..data.pipeline import Pipeline
from ..errors import UsageError


class OnnxModel(torch.nn.Module):
    """``model(x)``: the logits of float32 network inputs ``x`` from an onnxruntime session on the CPU (as many
    threads as torch's); ``features(x, "fc7")`` the file's fc7 output. Its state is the file's digest, so
    caches keyed by a network's state (``retrieve``'s) tell two files apart."""

    def __init__(self, path: Path):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's errors for files it cannot load
            raise UsageError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0][:200]})") from None
        self.path, self.input_name = Path(path), self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        side = self.session.get_inputs()[0].shape[-1]
        self.side = side if isinstance(side, int) else None  # the one input side it takes (None: any)
        digest = hashlib.sha1(self.path.read_bytes()).digest()
        self.register_buffer("sha1", torch.frombuffer(bytearray(digest), dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, self.outputs[0])

    def features(self, x: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        if layer not in self.outputs[1:]:
            raise UsageError(f"{self.path} gives no {layer} output (only {', '.join(self.outputs)}): export the "
                             f"checkpoint again with this version, whose ONNX files give fc7, or give the .pt")
        return self._run(x, layer)

    def _run(self, x: torch.Tensor, output: str) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([output], {self.input_name: array})[0])


def pipeline_from_info(info: dict, path: Path) -> Pipeline:
    """The evaluation pipeline an export's metadata describes (``use.export.export_info``)."""
    pre = info.get("preprocessing")
    if pre is None:
        raise UsageError(f"{path} carries no preprocessing (exported from a checkpoint without one); export it "
                         "again from a checkpoint that stores its pipeline")
    mean = torch.tensor(pre["mean"], dtype=torch.float32)
    mean = mean.view(3, 1, 1) if pre["mean_kind"] == "channel" else mean.view(3, pre["stored"], pre["stored"])
    std = None if pre["std"] is None else torch.tensor(pre["std"], dtype=torch.float32).view(3, 1, 1)
    return Pipeline(kind=pre["kind"], size=int(pre["size"]), stored=int(pre["stored"]), mean=mean,
                    mean_kind=pre["mean_kind"], std=std, resize=pre.get("resize", "center"), channels_last=False)


def classes_from_info(info: dict, outputs: int) -> list[dict]:
    return info.get("classes") or [{"index": i, "wnid": str(i), "name": str(i)} for i in range(outputs)]


def onnx_config(info: dict, overrides: list[str], data_path) -> RunConfig:
    """The run config ``alexnet eval`` reads an exported file's dataset with (``info``: its metadata): its
    model section, the dataset its preprocessing is of (``cifar10``, or an ImageNet-style folder at
    ``data_path``), and ``overrides``."""
    kind = (info.get("preprocessing") or {}).get("kind", "imagenet")
    return build_config({"model": info.get("model", {}), "data": {"dataset": kind}}, overrides, data_path)


def check_classes(path: Path, classes: list[dict], found: list) -> None:
    """Refuse, in one line, a dataset whose classes are not the file's (count, then wnids where it names them)."""
    if len(classes) != len(found):
        raise UsageError(f"{path} has {len(classes)} classes but the dataset has {len(found)}; use it with the "
                         "data it was trained on (--data)")
    mine = [str(c["wnid"]) for c in classes]
    if mine != [str(c) for c in range(len(classes))] and mine != [str(c) for c in found]:
        raise UsageError(f"{path} names other classes than the dataset (first: {mine[0]} against {found[0]}); "
                         "use it with the data it was trained on (--data)")
