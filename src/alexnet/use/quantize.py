"""int8 ONNX: onnxruntime's static quantisation of an exported network, calibrated on the user's photos.

``alexnet export --format onnx --quantize int8 --calibration DIR`` writes the float32 ONNX file as
usual, then quantises it (``onnxruntime.quantization.quantize_static``): weights int8 per output channel,
activations uint8 with ranges from the calibration images (read as ``predict`` reads them, through the
network's own preprocessing), in the QDQ format, which onnxruntime runs with int8 kernels (VNNI where
the CPU has it); LRN stays float. The int8 file carries the same metadata (classes, preprocessing),
with ``"quantized": "int8"``. The command reports how often the int8 network's top-1 class agrees with
the float32 one's on the calibration images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..runs.load import LoadedRun

CALIBRATION_LIMIT = 256  # calibration images at most (the first, sorted)


def calibration_inputs(loaded: LoadedRun, folder: Path, limit: int = CALIBRATION_LIMIT) -> np.ndarray:
    """The network's float32 inputs (N, 3, size, size) of up to ``limit`` image files under ``folder``."""
    from ..data.images import image_files, read_batches

    if loaded.pipeline is None:
        raise UsageError(f"{loaded.path} stores no input pipeline: int8 calibration needs the network's "
                         "preprocessing; save the checkpoint with its pipeline")
    files, _ = image_files([folder])
    stored = [b.images for b in read_batches(files[:limit], loaded.pipeline, 64)]
    images = torch.cat(stored) if stored else torch.zeros(0)
    if len(images) == 0:
        raise UsageError(f"--calibration {folder}: no readable images; give a folder of photos like the ones "
                         "the network will see")
    return loaded.pipeline.eval_input(images).contiguous().numpy()


def quantize_int8(fp32: Path, out: Path, inputs: np.ndarray, metadata: str) -> dict:
    """Quantise the ONNX file ``fp32`` into ``out`` calibrated on ``inputs``; the top-1 agreement on them."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # the calibration inputs, 16 at a time
        def __init__(self):
            self.batches = iter([{"image": inputs[i:i + 16]} for i in range(0, len(inputs), 16)])

        def get_next(self):
            return next(self.batches, None)

    prepared = fp32.with_name(fp32.name + ".pre")  # shapes inferred and the graph folded, as onnxruntime advises
    try:
        quant_pre_process(str(fp32), str(prepared))
        band = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv" and _one_by_one(n)]
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul", "MaxPool"], nodes_to_exclude=band)
    finally:
        prepared.unlink(missing_ok=True)
    model = onnx.load(str(out))
    info = json.loads(metadata)
    del model.metadata_props[:]
    model.metadata_props.add(key="alexnet", value=json.dumps({**info, "quantized": "int8"}))
    onnx.save(model, str(out))
    top_fp32, top_int8 = (_top1(path, inputs) for path in (fp32, out))
    return {"calibration_images": len(inputs), "top1_agreement": round(float((top_fp32 == top_int8).mean()), 4)}


def _one_by_one(node) -> bool:
    """Whether a Conv node is the LRN's 1x1 window sum (``nn.lrn.lrn_by_band``), which stays float: its
    input, the squares, spans too many decades for 8 bits."""
    import onnx

    shape = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "kernel_shape"]
    return bool(shape) and list(shape[0]) == [1, 1]


def _top1(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": inputs[i:i + 64]})[0].argmax(1)
                           for i in range(0, len(inputs), 64)])
