"""An exported ``.onnx`` file (float32 or int8) as a model: ``predict`` and ``serve`` take it in place of a
checkpoint, with the classes and preprocessing its metadata carries and an onnxruntime session, nothing
of the training side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.pipeline import Pipeline
from ..errors import UsageError


class OnnxModel(torch.nn.Module):
    """``model(x)``: the logits of float32 network inputs ``x`` from an onnxruntime session, on the CPU."""

    def __init__(self, path: Path):
        super().__init__()
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's errors for files it cannot load
            raise UsageError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


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
