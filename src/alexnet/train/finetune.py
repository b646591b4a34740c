"""Fine-tuning: a run that starts from another network's weights (``alexnet train --init CKPT``).

The init is any checkpoint (a run of this project, ``alexnet import torchvision`` or ``caffe`` output)
or torchvision's state_dict file itself (``use.pretrained.load_init``). The run keeps:

- the init's network: its model section is the run's, under the recipe and the command line (which
  may change what does not change a layer's shape, such as dropout); fc8 gets the data's classes;
- every weight whose name and shape match; fc8 is made anew (the network's own initialisation) unless
  the data's classes are the init's, in the same order. Any other mismatch (another variant, width,
  conv2 kernel) is refused in one line naming the layer and both shapes, before anything is written;
- the init's input: input size, stored side, resize mode, mean image or mean and std, and Caffe's BGR
  order (folded into conv1's weights), so its features see what they were trained on; the data's own
  statistics are not swapped in. A photo folder is prepared with the init's resize mode (``data.resize``:
  centre squares, or the whole photo squashed after a Caffe import), so training, validation and
  ``predict`` see photos as the init did. Training adds random crops at that input size and mirror images
  (``data.flip``), and PCA lighting from the data's colours only if ``data.pca_std`` asks for it.

Where it started (``init.path``, ``init.sha256``) is in the run's config, checkpoints and summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from ..config import RunConfig, build_config
from ..data import views
from ..data.pipeline import Lighting, Pipeline, lighting_magnitude
from ..errors import UsageError
from ..nn.model import AlexNet
from ..runs.load import LoadedRun

ARCHITECTURE_OWN = ("num_classes", "tower_devices")  # what the fine-tune decides itself: the data's classes, one device


def fine_tune_config(init: LoadedRun, recipe: dict, overrides: list[str], data_path: str | None) -> RunConfig:
    """The run config of a fine-tune from ``init``: the init's network under the recipe and ``overrides``,
    fc8's classes left to the data, ``init.path`` and ``init.sha256`` filled in."""
    model = {f"model.{key}": value for key, value in dataclasses.asdict(init.config.model).items()
             if key not in ARCHITECTURE_OWN}
    start = {"init.path": str(init.path), "init.sha256": sha256(init.path)}
    if init.pipeline is not None:  # a photo folder is prepared as the init's data was: centre squares or squashed
        start["data.resize"] = init.pipeline.resize
    return build_config(recipe, overrides, data_path, under=model | start)


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_fits(init: LoadedRun, config: RunConfig) -> None:
    """Refuse, in one line and before anything is written, a network the init's weights do not fit:
    every layer but fc8 must have the init's shape (built on the meta device: no memory, no time; on one
    device, as the tower split does not change a shape). An init without a stored input is refused here too."""
    check_views(tested_pipeline(init), config)
    with torch.device("meta"):
        net = AlexNet(dataclasses.replace(config.model, num_classes=config.model.num_classes or 1, tower_devices=""))
    theirs = init.model.state_dict()
    for key, value in net.state_dict().items():
        if key.startswith("fc8."):
            continue
        found = theirs.get(key)
        if found is None or found.shape != value.shape:
            there = "is missing" if found is None else f"is {_shape(found)}"
            raise UsageError(f"--init {init.path}: {key} {there} in the init but {_shape(value)} in the network to "
                             "train; a fine-tune keeps the init's network (drop the model.* override that changes "
                             "it, or train from scratch without --init)")


def check_views(tested: Pipeline, config: RunConfig) -> None:
    """Refuse validation views the fine-tune's input (``tested``: the init's, or a resumed run's) cannot give."""
    if why := views.refusal(tested.kind, config.train.eval_crops):
        raise UsageError(f"train.eval_crops={config.train.eval_crops}: {why} (the network keeps its init's "
                         f"{tested.kind} input)")


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape))


def start_model(init: LoadedRun, config: RunConfig, classes: tuple[str, ...]) -> AlexNet:
    """The network to fine-tune: the init's weights, fc8 anew unless the data's ``classes`` are the init's."""
    model = AlexNet(config.model)
    same = init.classes is not None and [c["wnid"] for c in init.classes] == list(classes)
    state = {k: v for k, v in init.model.state_dict().items() if same or not k.startswith("fc8.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"fc8.weight", "fc8.bias"} - set(state)), (missing, unexpected)
    return model


def train_pipeline(tested: Pipeline, config: RunConfig, data) -> Pipeline:
    """The training pipeline of a fine-tune whose network is tested through ``tested`` (the init's, or
    the checkpoint's when a fine-tune resumes): its input with crops, mirrors and (``data.pca_std``)
    lighting from the data's colours."""
    d, lighting = config.data, None
    if d.pca_std and getattr(data, "stats", None) is not None:
        stats = data.stats
        lighting = Lighting(lighting_magnitude(stats["eigval"], d.pca_scale), stats["eigvec"], d.pca_std)
    return dataclasses.replace(tested, flip=d.flip, lighting=lighting, channels_last=config.train.channels_last)


def tested_pipeline(init: LoadedRun) -> Pipeline:
    """The input the init's network was tested through, refused in one line where its checkpoint has none."""
    if init.pipeline is None:
        raise UsageError(f"--init {init.path} stores no input pipeline (it was saved without one and needs its "
                         "training data's mean image); save it with its pipeline, or train from scratch")
    return init.pipeline
