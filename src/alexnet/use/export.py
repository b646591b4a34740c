"""Export a checkpoint's network as ONNX, TorchScript or safetensors, with its preprocessing.

Every format carries the same JSON (``FORMAT``): the model config, the class list and
the evaluation preprocessing (input side, stored side, resize mode, per-channel mean and std on
the 0..255 scale, or the training set's mean image). It sits in the file's own metadata (ONNX
``metadata_props["alexnet"]``, TorchScript extra file ``alexnet.json``, safetensors metadata
``alexnet``) and in ``<out>.json`` beside the file. A 3x256x256 mean image (ImageNet runs) is
too large for a metadata string: ONNX and safetensors metadata name the sidecar instead, which
holds it as nested lists; TorchScript's extra file holds everything.

Each export is checked before the command returns: the written file is run (onnxruntime,
``torch.jit.load``, ``load_safetensors``) on a batch whose size differs from the traced one, and
the largest softmax difference to PyTorch is printed in the command's JSON line.

ONNX uses ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript): the default and the
supported exporter since torch 2.9; the TorchScript-based one is deprecated there. The LRN is written
in plain ops (``nn.lrn.lrn_by_band``: a 1x1 convolution with a 0/1 band matrix over the squares), which
onnxruntime runs far faster than its own ``LRN`` node. The file gives two outputs: ``logits`` and ``fc7``
(after its ReLU), the features ``retrieve`` ranks by.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UsageError
from ..files import atomic_path, atomic_write
from ..nn.model import AlexNet, ModelConfig
from ..runs.load import LoadedRun, load_run

FORMATS = ("onnx", "torchscript", "safetensors")
FORMAT = "alexnet-export-v2"  # v1: no "mean_kind" (read_info tells it from the mean)
OPSET = 18  # ONNX opset (LRN is in every opset; 18 is torch 2.9-2.14's default for dynamo export)
TRACE_BATCH, CHECK_BATCH = 2, 3  # the check runs another batch size than the export saw (dynamic axis)
TOLERANCE = 1e-4  # largest softmax difference to PyTorch the check accepts


def export(checkpoint: Path, fmt: str, out: Path, calibration: Path | None = None) -> dict:
    """Write ``checkpoint``'s network to ``out`` in ``fmt`` plus ``<out>.json``, run the written
    file against PyTorch and return what the command prints; ``calibration`` (ONNX only): quantise it to
    int8 on the photos of that folder (``quantize.py``)."""
    if fmt not in FORMATS:
        raise UsageError(f"export format {fmt!r} is unknown; choose one of: {', '.join(FORMATS)}")
    if calibration is not None and fmt != "onnx":
        raise UsageError("--quantize int8 writes ONNX: add --format onnx")
    loaded = load_run(checkpoint)
    if calibration is not None:
        return export_int8(loaded, out, calibration)
    info = export_info(loaded)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with atomic_path(out) as tmp:
        WRITERS[fmt](loaded.model, tmp, info, sidecar(out))
    seconds = time.perf_counter() - start
    atomic_write(sidecar(out), lambda f: f.write(json.dumps(info).encode()))
    x = check_input(loaded, CHECK_BATCH)
    with torch.no_grad():
        diff = (softmax(RUNNERS[fmt](out, x)) - softmax(loaded.model(x))).abs().max().item()
    return {"format": fmt, "out": str(out), "sidecar": str(sidecar(out)), "seconds": round(seconds, 2),
            "check": CHECKS[fmt], "batch": CHECK_BATCH, "max_abs_diff": diff}


def export_int8(loaded: LoadedRun, out: Path, calibration: Path) -> dict:
    """The float32 ONNX network quantised to int8 into ``out`` (``quantize.py``), with ``<out>.json``."""
    from .quantize import calibration_inputs, quantize_int8

    inputs = calibration_inputs(loaded, calibration)
    info, out = export_info(loaded), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fp32 = out.with_name(out.name + ".fp32.tmp")
    start = time.perf_counter()
    try:
        write_onnx(loaded.model, fp32, info, sidecar(out))
        with atomic_path(out) as tmp:
            result = quantize_int8(fp32, tmp, inputs, metadata_text(info, sidecar(out)))
    finally:
        fp32.unlink(missing_ok=True)
    atomic_write(sidecar(out), lambda f: f.write(json.dumps({**info, "quantized": "int8"}).encode()))
    return {"format": "onnx", "quantized": "int8", "out": str(out), "sidecar": str(sidecar(out)),
            "seconds": round(time.perf_counter() - start, 2), "check": "onnxruntime, top-1 against float32",
            **result}


def sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(logits).float().softmax(1)


# ---------------------------------------------------------------------------- what travels with the file


def export_info(loaded: LoadedRun) -> dict:
    """The JSON every format carries: model config, classes and preprocessing (None where an old
    ImageNet checkpoint did not store it)."""
    loaded.check_names()
    p = loaded.pipeline
    pre = None
    if p is not None:
        pre = {"kind": p.kind, "size": p.size, "stored": p.stored, "resize": p.resize,
               "crop": "none" if p.kind == "cifar10" else "center", "mean_kind": p.mean_kind,
               "mean": p.mean.flatten().tolist() if p.mean_kind == "channel" else p.mean.tolist(),
               "std": None if p.std is None else p.std.flatten().tolist(),
               "steps": "resize the image file to stored x stored (center: its centre square; squash: the whole "
                        "image), take the centre size x size window (crop), RGB floats 0..255, subtract mean (per "
                        "channel, or the same window of the 3 x stored x stored mean image), divide by std if given"}
    return {"format": FORMAT, "input": "float32 (batch, 3, size, size) RGB, preprocessed", "output": "logits",
            "outputs": {"logits": "(batch, classes)", "fc7": "(batch, 4096 x width) fc7 after its ReLU (ONNX)"},
            "model": dataclasses.asdict(loaded.model.config), "classes": loaded.classes, "preprocessing": pre,
            "eval_crops": loaded.config.train.eval_crops}  # the views alexnet eval takes by default


def metadata_text(info: dict, side: Path) -> str:
    """``info`` as one JSON string for a file's metadata; a mean image is replaced by where it is."""
    pre = info["preprocessing"]
    if pre is not None and pre["mean_kind"] == "image":
        shape = [len(pre["mean"]), len(pre["mean"][0]), len(pre["mean"][0][0])]
        info = {**info, "preprocessing": {**pre, "mean": f"mean image {shape}: see {side.name}"}}
    return json.dumps(info)


def read_info(path: Path) -> dict:
    """The JSON an exported file carries (mean image from ``<path>.json`` where the metadata names it)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give a file `alexnet export` wrote")
    try:
        text = _read_metadata(path)
    except Exception as err:  # noqa: BLE001 - onnx's DecodeError, safetensors' and zipfile's errors on damaged files
        said = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise UsageError(f"{path} is not a readable {path.suffix.lstrip('.') or 'export'} file ({said}); give a "
                         "file `alexnet export` wrote, whole") from None
    if text is None:
        raise UsageError(f"{path} carries no alexnet export metadata; give a file `alexnet export` wrote")
    info = json.loads(text)
    pre = info.get("preprocessing")
    if pre is not None and "mean_kind" not in pre:  # alexnet-export-v1
        pre["mean_kind"] = "image" if isinstance(pre["mean"], str) or isinstance(pre["mean"][0], list) else "channel"
    if pre is not None and isinstance(pre["mean"], str):
        if not sidecar(path).is_file():
            raise UsageError(f"{path}: its mean image is in {sidecar(path).name}, which is missing; "
                             "keep the two together")
        info["preprocessing"]["mean"] = json.loads(sidecar(path).read_text())["preprocessing"]["mean"]
    return info


def _read_metadata(path: Path) -> str | None:
    if path.suffix == ".onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}.get("alexnet")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("alexnet")
    import zipfile  # TorchScript: a zip whose extra files lie under <archive>/extra/

    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        name = next((n for n in z.namelist() if n.endswith("/extra/alexnet.json")), None)
        return None if name is None else z.read(name).decode()


def check_input(loaded: LoadedRun, n: int) -> torch.Tensor:
    """``n`` seeded random stored images through the checkpoint's evaluation pipeline (so the check
    sees inputs of the real range); random normal ones where the checkpoint has no pipeline."""
    g = torch.Generator().manual_seed(0)
    p, size = loaded.pipeline, loaded.config.model.input_size
    if p is None:
        return torch.randn(n, 3, size, size, generator=g)
    images = torch.randint(0, 256, (n, 3, p.stored, p.stored), dtype=torch.uint8, generator=g)
    return p.eval_input(images).contiguous()


# ---------------------------------------------------------------------------- ONNX


class LogitsAndFc7(torch.nn.Module):
    """What an ONNX file gives: the logits, and fc7 (after its ReLU) for ``retrieve`` (section 6.1)."""

    def __init__(self, model: AlexNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fc7 = self.model.features(x, "fc7")
        return self.model.forward_from(fc7, "fc8"), fc7


def write_onnx(model: AlexNet, out: Path, info: dict, side: Path) -> None:
    example = torch.zeros(TRACE_BATCH, 3, model.config.input_size, model.config.input_size)
    program = torch.onnx.export(
        LogitsAndFc7(model).eval(), (example,), dynamo=True, opset_version=OPSET, input_names=["image"],
        output_names=["logits", "fc7"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False,
        verbose=False)
    program.model.metadata_props["alexnet"] = metadata_text(info, side)
    program.save(str(out))


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


# ---------------------------------------------------------------------------- TorchScript


@contextlib.contextmanager
def quiet_jit():
    """torch.jit warns FutureWarning (deprecated) on every call from torch 2.10; it still works, so
    those warnings and the tracer's about local_response_norm's empty-input branch are hidden here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def write_torchscript(model: AlexNet, out: Path, info: dict, side: Path) -> None:
    # trace, not script: the forward pass walks its stages by name, which script rejects.
    example = torch.zeros(TRACE_BATCH, 3, model.config.input_size, model.config.input_size)
    with quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={"alexnet.json": json.dumps(info)})


def run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with quiet_jit(), torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(x)


# ---------------------------------------------------------------------------- safetensors


def write_safetensors(model: AlexNet, out: Path, info: dict, side: Path) -> None:
    tensors = {name: t.contiguous() for name, t in model.state_dict().items()}
    metadata = {"alexnet_model_config": json.dumps(info["model"]), "alexnet": metadata_text(info, side)}
    save_file(tensors, str(out), metadata=metadata)


def load_safetensors(path: Path) -> AlexNet:
    """The network from an exported .safetensors file (no pickle involved at all)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("alexnet_model_config", "{}"))
    model = AlexNet(ModelConfig(**config))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def run_safetensors(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_safetensors(path)(x)


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript, "safetensors": write_safetensors}
RUNNERS = {"onnx": run_onnx, "torchscript": run_torchscript, "safetensors": run_safetensors}
CHECKS = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "safetensors": "load_safetensors"}
