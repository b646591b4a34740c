"""Published AlexNet weights (torchvision's, BVLC Caffe's) as alexnet checkpoints (``alexnet import``).

Each import writes one checkpoint that carries the network, the 1,000 ImageNet classes and the
preprocessing the weights were trained with, so ``eval``, ``predict``, ``export`` and the rest
use them through ``runs.load.load_run`` like any trained run.

torchvision (``alexnet-owt-7be5be79.pth``): a plain state_dict read with ``weights_only=True``
into the ``"torchvision"`` variant; input 224, centre crop of the 256 image, (x/255 - mean) / std.

Caffe (BVLC's ``bvlc_alexnet.caffemodel``, a binary ``NetParameter``): read with a schema of the
few ``caffe.proto`` fields we need, built here at run time (no protoc, no generated module), into
the paper's two-tower network. BVLC's deploy net deviates from the paper, and the import keeps
its deviations so that the network gives Caffe's outputs:
- conv1 has no padding and the input is 227x227 (``conv1_padding=0, input_size=227``);
- LRN uses k=1, not the paper's 2 (``lrn_k=1``); n=5, alpha=1e-4 (divided by n), beta=0.75 agree;
- the input is BGR, 0..255 minus the mean image: conv1's input channels are reversed so that the
  network takes RGB, and the mean is stored as RGB;
- the training images were squashed to 256x256 ignoring the aspect ratio (``resize="squash"``).
Caffe's max-pool rounds its output size up, ours down; at 227 every pool divides exactly
(55 -> 27 -> 13 -> 6), so both agree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ..config import build_config, to_dict
from ..data.imagenet.sources import imagenet_classes
from ..data.pipeline import IMAGENET_MEAN, IMAGENET_STD, Pipeline
from ..errors import UsageError
from ..files import atomic_write
from ..nn.model import TORCHVISION_NAMES, AlexNet, ModelConfig
from ..runs.checkpoint import checkpoint_dict, unpickling_refusal
from ..runs.load import LoadedRun, load_run, loaded_from

BVLC_MEAN_BGR = (104.007, 116.669, 122.679)  # ilsvrc_2012_mean.npy per channel, 0..255 (caffe's examples)
CAFFE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


# ---------------------------------------------------------------------------------- shared


def _save(out: Path, model: AlexNet, pipeline: Pipeline, imported: dict) -> dict:
    """Write the checkpoint (``_checkpoint``) to ``out``; what the command prints."""
    payload = _checkpoint(model, pipeline, imported)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: torch.save(payload, f))
    return {**imported, "out": str(out), "classes": model.config.num_classes}


def _checkpoint(model: AlexNet, pipeline: Pipeline, imported: dict) -> dict:
    """The checkpoint of imported weights: a full run config (ImageNet, fp32), the classes and the pipeline."""
    recipe = {"recipe": f"import-{imported['source']}", "model": dataclasses.asdict(model.config),
              "data": {"dataset": "imagenet"},
              "train": {"precision": "fp32"}}  # the published numbers are fp32; bf16 would shift them
    config = to_dict(build_config(recipe))
    classes = _imagenet_classes() if model.config.num_classes == 1000 else None
    return checkpoint_dict(model, config, classes=classes, pipeline=pipeline.state_dict(), imported=imported)


def load_init(path: Path) -> LoadedRun:
    """The starting point of a fine-tune (``alexnet train --init``): any checkpoint (a run's, an import's),
    or torchvision's AlexNet state_dict file itself, imported in memory."""
    path = Path(path)
    if path.is_file() and _is_state_dict(path):
        model, pipeline = _torchvision_parts(path)
        return loaded_from(_checkpoint(model, pipeline, {"source": "torchvision", "file": path.name}), path)
    return load_run(path)


def _is_state_dict(path: Path) -> bool:
    """Whether ``path`` holds a plain state_dict (torchvision's format) rather than an alexnet checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a torch.save zip: load_run says what it is
        return False
    return isinstance(state, dict) and "model" not in state and "classifier.6.weight" in state


def _imagenet_classes() -> list[dict]:
    """The 1,000 ILSVRC-2012 classes in the standard order, as checkpoints store them."""
    return [{"index": i, "wnid": wnid, "name": name} for i, (wnid, name) in enumerate(imagenet_classes().items())]


def _shape(dims) -> str:
    return "x".join(str(d) for d in dims) or "scalar"


# ----------------------------------------------------------------------------- torchvision


def import_torchvision(path: Path, out: Path) -> dict:
    """torchvision's AlexNet state_dict at ``path`` -> a checkpoint at ``out``."""
    model, pipeline = _torchvision_parts(path)
    return _save(out, model, pipeline, {"source": "torchvision", "file": path.name})


def _torchvision_parts(path: Path) -> tuple[AlexNet, Pipeline]:
    """The network (eval mode) and the preprocessing of torchvision's AlexNet weights at ``path``."""
    state = _read_torchvision(path)
    fc8 = state.get("classifier.6.weight")
    if not isinstance(fc8, torch.Tensor) or fc8.dim() != 2 or fc8.shape[0] < 1:
        raise UsageError(f"{path} has no classifier.6.weight (fc8): not torchvision's AlexNet weights, or truncated")
    model = AlexNet(ModelConfig(variant="torchvision", num_classes=fc8.shape[0], input_size=224,
                                lrn=False, towers=False))  # the torchvision variant has neither
    _check_torchvision(state, model, path)
    model.load_state_dict(state, assign=True)  # renames features.0 ... itself; assign: no second copy
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255  # torchvision normalises x/255; we keep 0..255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=mean, mean_kind="channel", std=std,
                        resize="center")
    return model.eval(), pipeline


def _read_torchvision(path: Path) -> dict:
    """The state_dict in ``path``, read with ``weights_only=True`` (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises, the file is not one it reads
        if "GLOBAL " in str(err):  # a whole pickled model: torch.load would have to run its code
            raise UsageError(unpickling_refusal(str(path), err)) from None
        hint = "; a .caffemodel goes to alexnet import caffe" if path.suffix == ".caffemodel" else ""
        raise UsageError(f"{path} is not a readable torch.save file ({type(err).__name__}): truncated or another "
                         f"format; pass torchvision's alexnet-owt-7be5be79.pth{hint}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} is not a plain state_dict (a dict of tensors); pass torchvision's "
                         "alexnet-owt-7be5be79.pth (an alexnet checkpoint needs no import)")
    return state


def _check_torchvision(state: dict, model: AlexNet, path: Path) -> None:
    """Every key torchvision's AlexNet has, each with its shape, and nothing else."""
    own = model.state_dict()
    expected = {f"{old}.{kind}": own[f"{new}.{kind}"].shape for old, new in TORCHVISION_NAMES.items()
                for kind in ("weight", "bias")}
    for key, shape in expected.items():
        if key not in state:
            raise UsageError(f"{path} has no {key}: not torchvision's AlexNet weights, or truncated")
        if state[key].shape != shape:
            raise UsageError(f"{path}: {key} is {_shape(state[key].shape)} but torchvision's AlexNet has "
                             f"{_shape(shape)}; pass the weights of torchvision.models.alexnet")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise UsageError(f"{path} has {extra[0]!r}, which torchvision's AlexNet does not; pass the weights of "
                         "torchvision.models.alexnet")


# ----------------------------------------------------------------------------------- caffe


def import_caffe(path: Path, out: Path, mean_path: Path | None = None) -> dict:
    """BVLC's bvlc_alexnet (or a smaller net of the same design) at ``path`` -> a checkpoint at ``out``."""
    blobs = read_caffemodel(path)
    model = AlexNet(caffe_config(blobs, path))
    model.load_state_dict(_caffe_state(blobs, model, path), assign=True)  # assign: no second copy
    mean, kind = _caffe_mean(mean_path)
    side = mean.shape[-1] if kind == "image" else 256  # Caffe's ImageNet images: 256x256
    pipeline = Pipeline(kind="imagenet", size=227, stored=side, mean=mean, mean_kind=kind, resize="squash")
    imported = {"source": "caffe", "file": path.name, "mean": mean_path.name if mean_path else "per-channel",
                "width": model.config.width, "towers": model.config.towers}
    return _save(out, model.eval(), pipeline, imported)


@functools.cache
def caffe_messages() -> dict[str, type]:
    """Message classes for the part of caffe.proto we read (same field numbers and types), built
    from a FileDescriptorProto at run time: no protoc and no generated _pb2 module."""
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="alexnet_caffe.proto", package="alexnet_caffe", syntax="proto2")

    def message(name: str, *fields) -> None:
        m = proto.message_type.add(name=name)
        for field_name, number, kind, label, *type_name in fields:
            field = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".alexnet_caffe.{type_name[0]}"
            if label == f.LABEL_REPEATED and kind not in (f.TYPE_MESSAGE, f.TYPE_STRING):
                field.options.packed = True  # as caffe.proto declares them

    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("BlobShape", ("dim", 1, f.TYPE_INT64, many))
    message("BlobProto", ("num", 1, f.TYPE_INT32, one), ("channels", 2, f.TYPE_INT32, one),
            ("height", 3, f.TYPE_INT32, one), ("width", 4, f.TYPE_INT32, one),
            ("data", 5, f.TYPE_FLOAT, many), ("shape", 7, f.TYPE_MESSAGE, one, "BlobShape"),
            ("double_data", 8, f.TYPE_DOUBLE, many))
    message("LayerParameter", ("name", 1, f.TYPE_STRING, one), ("type", 2, f.TYPE_STRING, one),
            ("blobs", 7, f.TYPE_MESSAGE, many, "BlobProto"))
    # The legacy layout (``layers``, field 2) that bvlc_alexnet was saved in; its type is an enum
    # in caffe.proto, read here as the same varint (int32): we only show it.
    message("V1LayerParameter", ("name", 4, f.TYPE_STRING, one), ("type", 5, f.TYPE_INT32, one),
            ("blobs", 6, f.TYPE_MESSAGE, many, "BlobProto"))
    message("NetParameter", ("name", 1, f.TYPE_STRING, one),
            ("layers", 2, f.TYPE_MESSAGE, many, "V1LayerParameter"),
            ("layer", 100, f.TYPE_MESSAGE, many, "LayerParameter"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    names = ("BlobShape", "BlobProto", "LayerParameter", "V1LayerParameter", "NetParameter")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"alexnet_caffe.{n}")) for n in names}


def read_caffemodel(path: Path) -> dict[str, list[tuple[tuple[int, ...], np.ndarray]]]:
    """Layer name -> its blobs as (shape as stored, float32 data), for the layers conv1 ... fc8."""
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04" or raw[:1] == b"\x80":  # a zip (torch.save) or a pickle
        raise UsageError(f"{path} is a PyTorch file, not a .caffemodel; use alexnet import torchvision for it")
    try:
        net = caffe_messages()["NetParameter"].FromString(raw)
    except DecodeError:
        raise UsageError(f"{path} is not a Caffe NetParameter (the protobuf does not parse: truncated or another "
                         "format); pass BVLC's bvlc_alexnet.caffemodel") from None
    found = {}
    for layer in [*net.layer, *net.layers]:  # the new layout first; bvlc_alexnet uses the V1 one
        if layer.name in CAFFE_LAYERS and layer.name not in found:
            found[layer.name] = [_blob(blob, path, layer.name) for blob in layer.blobs]
    return found


def _blob(blob, path: Path, layer: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, float32 data) of one BlobProto; legacy blobs give num x channels x height x width."""
    shape = tuple(blob.shape.dim) if blob.HasField("shape") else (blob.num, blob.channels, blob.height, blob.width)
    # upb's repeated fields export the array interface: one memcpy, no Python float per number.
    data = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if data.size != math.prod(shape):
        raise UsageError(f"{path}: a blob of layer {layer} holds {data.size} numbers but its shape "
                         f"{_shape(shape)} needs {math.prod(shape)}: the file is damaged or truncated")
    return shape, data


def caffe_config(blobs: dict, path: Path) -> ModelConfig:
    """The paper network in Caffe's deploy form, sized by the file: width from conv1's kernel count
    (96 -> 1.0), towers from conv2's input channels, classes from fc8."""
    for name in CAFFE_LAYERS:
        if len(blobs.get(name, ())) != 2:
            have = ", ".join(n for n in CAFFE_LAYERS if n in blobs) or "none"
            raise UsageError(f"{path} has no {name} with weights and bias (AlexNet layers found: {have}): "
                             "truncated, or not an AlexNet caffemodel; pass BVLC's bvlc_alexnet.caffemodel")
    conv1, conv2, fc8 = (blobs[name][0][0] for name in ("conv1", "conv2", "fc8"))
    plausible = len(conv1) == 4 and conv1[1:] == (3, 11, 11) and conv1[0] % 2 == 0 and len(conv2) == 4
    if not plausible or len(fc8) < 2 or fc8[-2] < 1:
        raise UsageError(f"{path}: conv1 weight is {_shape(conv1)}, conv2's {_shape(conv2)}, fc8's {_shape(fc8)}; "
                         "expected Kx3x11x11 (K even), 256x48x5x5 and 1000x4096 as in bvlc_alexnet")
    kernels, conv2_inputs = conv1[0], conv2[1]
    if conv2_inputs not in (kernels // 2, kernels):
        raise UsageError(f"{path}: conv2 takes {conv2_inputs} input channels but conv1 has {kernels} kernels "
                         f"(expected {kernels // 2}: two towers, or {kernels}: one); not an AlexNet caffemodel")
    towers = conv2_inputs == kernels // 2
    return ModelConfig(variant="paper", num_classes=fc8[-2], width=kernels / 96, towers=towers,
                       lrn_k=1.0,  # Caffe's deploy net: k=1 (the paper: 2)
                       conv1_padding=0, input_size=227)  # Caffe: 227 input, conv1 unpadded -> 55x55


def _caffe_state(blobs: dict, model: AlexNet, path: Path) -> dict[str, torch.Tensor]:
    """The network's state_dict from the blobs, each checked against the network's shape."""
    own, state = model.state_dict(), {}
    for name in CAFFE_LAYERS:
        for kind, (shape, data) in zip(("weight", "bias"), blobs[name]):
            target = tuple(own[f"{name}.{kind}"].shape)
            state[f"{name}.{kind}"] = torch.from_numpy(data.reshape(_fit(shape, target, path, name, kind)))
    # Caffe's input is BGR: reverse conv1's input channels so the network takes RGB.
    state["conv1.weight"] = state["conv1.weight"].flip(1)
    return state


def _fit(shape: tuple[int, ...], target: tuple[int, ...], path: Path, layer: str, kind: str) -> tuple[int, ...]:
    """``shape`` without the leading 1s of Caffe's legacy 4-d blobs (fc: 1x1xOxI, bias: 1x1x1xN),
    or a one-line refusal naming the layer and both shapes."""
    dims = list(shape)
    while len(dims) > len(target) and dims[0] == 1:
        dims.pop(0)
    if tuple(dims) != target:
        raise UsageError(f"{path}: {layer} {kind} is {_shape(shape)} but the network needs {_shape(target)}; "
                         "not the AlexNet design (conv 11/5/3/3/3, fc 4096) at one width")
    return target


def _caffe_mean(path: Path | None) -> tuple[torch.Tensor, str]:
    """The mean to subtract, RGB on 0..255, and its kind: an "image" (3, S, S) from ``path`` (.npy or
    .binaryproto, BGR as Caffe stores it; 3 values there are a "channel" mean), or BVLC's per-channel
    mean (3, 1, 1)."""
    if path is None:
        return torch.tensor(BVLC_MEAN_BGR[::-1], dtype=torch.float32).view(3, 1, 1), "channel"
    if not path.is_file():
        raise UsageError(f"--mean {path} not found; pass ilsvrc_2012_mean.npy or a .binaryproto mean")
    bgr = _read_npy_mean(path) if path.suffix == ".npy" else _read_binaryproto_mean(path)
    if bgr.ndim == 4 and bgr.shape[0] == 1:
        bgr = bgr[0]
    kind = "channel" if bgr.size == 3 else "image"
    if kind == "channel":
        bgr = bgr.reshape(3, 1, 1)
    square = bgr.ndim == 3 and bgr.shape[0] == 3 and bgr.shape[1] == bgr.shape[2]
    if not square or (kind == "image" and bgr.shape[1] < 227):  # an image at least as large as the crop
        raise UsageError(f"--mean {path} is {_shape(bgr.shape)}; expected 3x256x256 (BGR, as BVLC ship it) or 3 values")
    if not np.isfinite(bgr).all():
        raise UsageError(f"--mean {path} holds nan or infinite values; pass BVLC's ilsvrc_2012_mean.npy, whole")
    return torch.from_numpy(np.ascontiguousarray(bgr[::-1], dtype=np.float32)), kind  # BGR -> RGB


def _read_npy_mean(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"--mean {path} is not a readable .npy array ({type(err).__name__}); pass "
                         "ilsvrc_2012_mean.npy") from None


def _read_binaryproto_mean(path: Path) -> np.ndarray:
    try:
        blob = caffe_messages()["BlobProto"].FromString(path.read_bytes())
        shape, data = _blob(blob, path, "mean")
    except (DecodeError, UsageError):
        raise UsageError(f"--mean {path} is not a Caffe BlobProto mean (.binaryproto) or is truncated; pass "
                         "imagenet_mean.binaryproto or ilsvrc_2012_mean.npy") from None
    return data.reshape(shape)
