"""Configuration: one dataclass per concern, TOML recipes, dotted command-line overrides.

A recipe is a TOML file with the sections ``[model]``, ``[data]``, ``[optim]``, ``[train]``
and top-level keys (``seed``). Overrides such as ``optim.lr=0.02 model.lrn=false`` are parsed
as TOML values and checked against the dataclass fields; an unknown key is an error that
lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from .data import views
from .data.pipeline import CIFAR10_MEAN, CIFAR10_STD, PCA_SCALES, RESIZE
from .errors import UsageError
from .nn.model import LAYERS, ModelConfig, pool5_side
from .runtime import MAX_THREADS


def _at_least(low, most=None):
    if most is not None:  # also a ceiling: a typo's huge number overflows seeds and clocks, or memory
        return lambda v: low <= v <= most, f"at least {low} and at most {most:,}"
    return lambda v: v >= low, f"at least {low}"


def _within(low, high, open_high: bool = False):
    test = (lambda v: low <= v < high) if open_high else (lambda v: low <= v <= high)
    return test, f"in [{low}, {high}{')' if open_high else ']'}"


def _one_of(*choices):
    return lambda v: v in choices, f"one of {', '.join(map(str, choices))}"


SCHEDULES = ("plateau", "step", "onecycle", "cosine")
# What each number and word may be, checked whenever a config is made (a recipe, key=value overrides, a stored
# run's config.toml), so before anything is read or written; a nan fails every range. The choices and ranges that
# a dataclass's __post_init__ checks by itself are not repeated here.
LIMITS = {
    "seed": _at_least(0, 2**32 - 1), "model.input_size": _at_least(1, 4096),
    "model.width": (lambda v: v <= 16, "at most 16 (1.0: the paper's widths)"),
    "data.batch_size": _at_least(1), "data.eval_batch_size": _at_least(1), "data.limit": _at_least(0),
    "data.crop_padding": _at_least(0), "data.pca_std": _at_least(0), "data.workers": _at_least(-1),
    "optim.epochs": _at_least(1, 100_000), "optim.lr": _at_least(0), "optim.momentum": _within(0, 1, True),
    "optim.weight_decay": _at_least(0), "optim.warmup_epochs": _at_least(0), "optim.plateau_patience": _at_least(0),
    "optim.plateau_max_drops": _at_least(0), "optim.step_epochs": _at_least(1),
    "optim.final_lr_fraction": _within(0, 1), "optim.label_smoothing": _within(0, 1, True),
    "optim.schedule": _one_of(*SCHEDULES),
    "train.precision": _one_of("fp32", "bf16", "fp16"), "train.threads": _at_least(0, MAX_THREADS),
    "train.eval_every": _at_least(1),
}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_limits(values, section: str = "") -> None:
    """Every field of the dataclass ``values`` in its range (``LIMITS``) and finite: a one-line error naming the
    key, the value and one to give instead (the default)."""
    for f in dataclasses.fields(values):
        key, value = f"{section}.{f.name}" if section else f.name, getattr(values, f.name)
        test, what = LIMITS.get(key, (lambda v: True, ""))
        if isinstance(value, float) and not math.isfinite(value):
            test, what = (lambda v: False), "a finite number"
        if not test(value):
            raise ValueError(f"{key}={value!r}: must be {what}; e.g. {key}={f.default!r}")


def _check_stats(data: DataConfig) -> None:
    """``data.mean`` and ``data.std``: three numbers each, the std's positive."""
    for key, stats, default in (("mean", data.mean, CIFAR10_MEAN), ("std", data.std, CIFAR10_STD)):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in stats)
        if len(stats) != 3 or not numbers or (key == "std" and min(stats) <= 0):
            raise ValueError(f"data.{key}={list(stats)}: must be three {'positive ' if key == 'std' else ''}numbers, "
                             f"one per channel (R, G, B) on the 0..1 scale; e.g. data.{key}={list(default)}")


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 (the embedded default) | imagenet (a prepared folder)
    path: str = ""  # explicit data location; empty: cache, mirror, then download
    batch_size: int = 128  # images per optimiser step (all processes together)
    eval_batch_size: int = 512  # images per evaluation batch
    limit: int = 0  # >0: a seeded, class-balanced subset of this many images per split
    val_limit: int = -1  # validation subset: -1 as data.limit, 0 all images, N a class-balanced N
    crop_padding: int = 4  # random-crop padding in pixels (CIFAR); 0 disables the crop
    flip: bool = True  # random horizontal flips (section 4.1)
    pca_std: float = 0.1  # sigma of the PCA lighting alphas (section 4.1); 0 disables
    # PCA lighting's shift per unit alpha along component i: sqrt | fb. sqrt: sqrt(lambda_i) in pixel
    # units (this project's reading of the paper; ~12 levels at sigma 0.1 on ImageNet); fb: lambda_i of
    # 0..1-scale pixels, as fb.resnet.torch and its ports (~5 levels), converted to pixel units
    pca_scale: str = "sqrt"
    # prepared ImageNet: decode processes per training process; -1: the cores / local processes, 0: inline
    workers: int = -1
    # prepared JPEG shards: cpu (in the workers) | device (torchvision decode_jpeg on the training device,
    # nvJPEG on a GPU)
    decode: str = "cpu"
    mean: tuple[float, float, float] = CIFAR10_MEAN  # cifar10: per-channel mean, 0..1 scale
    std: tuple[float, float, float] = CIFAR10_STD  # cifar10: per-channel std, 0..1 scale
    # imagenet: after the mean image, divide by the training set's per-channel pixel std (stats.safetensors);
    # False: the paper
    standardize: bool = False
    # imagenet: how a photo folder is prepared into 256x256: center (its centre square, the paper's) | squash
    # (the whole photo, aspect ignored: Caffe's data; a fine-tune from a Caffe import takes it from its init)
    resize: str = "center"
    # Progressive resizing: the first low_res_epochs epochs train on random low_res_size windows of
    # the stored images (no padding), the rest on the usual input; 0 disables. The size must give
    # the same pool5 map as model.input_size (cifar: 25..32; see model.pool5_side).
    low_res_size: int = 0
    low_res_epochs: int = 0
    # Progressive resizing by scale (Howard's fast.ai DAWNBench runs; Touvron et al. 2019 on training
    # small and testing large): the first shrink_epochs epochs shrink each training window to
    # shrink_size x shrink_size (antialiased) before the network; 0 disables. pool5's smaller map is
    # average-pooled up to fc6's size in those epochs (nn.model.AlexNet._pool5).
    shrink_size: int = 0
    shrink_epochs: int = 0

    @property
    def val_size(self) -> int:
        """Images in the validation subset, 0 for all (``val_limit``, where -1 means ``limit``)."""
        return self.limit if self.val_limit < 0 else self.val_limit

    def __post_init__(self):
        _check_limits(self, "data")
        _check_stats(self)
        if self.dataset not in ("cifar10", "imagenet"):
            raise ValueError(f"data.dataset must be cifar10 or imagenet; got {self.dataset!r}")
        if self.pca_scale not in PCA_SCALES:
            raise ValueError(f"data.pca_scale must be one of {', '.join(PCA_SCALES)}; got {self.pca_scale!r}")
        if self.resize not in RESIZE:
            raise ValueError(f"data.resize must be one of {', '.join(RESIZE)}; got {self.resize!r}")
        if self.decode not in ("cpu", "device"):
            raise ValueError(f"data.decode must be cpu or device; got {self.decode!r}")
        if self.val_limit < -1:
            raise ValueError(f"data.val_limit must be -1 (as data.limit), 0 (all) or a count; got {self.val_limit}")
        if self.low_res_size < 0 or self.low_res_epochs < 0:
            raise ValueError("data.low_res_size and data.low_res_epochs must be >= 0 (0 disables)")
        if self.shrink_size < 0 or self.shrink_epochs < 0:
            raise ValueError("data.shrink_size and data.shrink_epochs must be >= 0 (0 disables)")


@dataclass
class OptimConfig:
    epochs: int = 90  # passes over the training set
    lr: float = 0.01  # peak learning rate for batch_size images (section 5)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4  # on weights only; biases are not decayed by default
    decay_biases: bool = False  # the paper decays every parameter
    schedule: str = "plateau"  # plateau | step | onecycle | cosine
    warmup_epochs: float = 0.0  # linear warm-up (onecycle, cosine)
    plateau_patience: int = 3  # epochs without a new best validation error before lr /= 10
    plateau_max_drops: int = 3  # the paper divided the rate three times
    step_epochs: int = 30  # step: lr /= 10 every this many epochs
    final_lr_fraction: float = 0.0  # onecycle/cosine: last lr as a fraction of the peak
    label_smoothing: float = 0.0
    # FreezeOut-style (Brock et al., 2017): freeze_after[i] = the epochs after which conv{i+1} stops
    # learning (its weights and bias are kept, nothing below it needs a gradient any more, so each
    # step skips that part of the backward pass). Non-decreasing; () keeps every layer learning.
    freeze_after: tuple[int, ...] = ()
    # Which layers learn: all | one layer (conv1 ... fc8) | a layer and every one after it (fc6+, conv4+).
    # The others are frozen: their weights stay, and below the first learning layer nothing needs a gradient.
    trainable: str = "all"
    # The learning rate of the layers a run takes from --init, as a fraction of optim.lr (fc8's, new).
    pretrained_lr_scale: float = 1.0

    def __post_init__(self):
        _check_limits(self, "optim")
        f = self.freeze_after
        if len(f) > 5 or any(not isinstance(e, int) or e < 1 for e in f) or list(f) != sorted(f):
            raise ValueError(f"optim.freeze_after must be at most 5 non-decreasing epoch counts >= 1 "
                             f"(conv1, conv2, ...), e.g. [3, 6]; got {list(f)}")
        trainable_layers(self.trainable)
        if not 0 < self.pretrained_lr_scale <= 1:
            raise ValueError(f"optim.pretrained_lr_scale must be in (0, 1]; got {self.pretrained_lr_scale}")


def trainable_layers(spec: str) -> tuple[str, ...]:
    """The layers ``optim.trainable`` names, in order: ``all``, ``fc8`` (that one), ``fc6+`` (fc6 and after)."""
    if spec == "all":
        return LAYERS
    name = spec.removesuffix("+")
    if name not in LAYERS:
        raise ValueError(f"optim.trainable must be all, a layer ({', '.join(LAYERS)}) or a layer and those after it "
                         f"(e.g. fc6+, conv4+); got {spec!r}")
    return LAYERS[LAYERS.index(name):] if spec.endswith("+") else (name,)


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "bf16"  # fp32 | bf16 | fp16 (autocast; fp16 uses a grad scaler)
    channels_last: bool = True
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default
    eval_every: int = 1  # epochs between validation passes (the last epoch always evaluates)
    # views per image when validating, softmax averaged (data/views.py): 1 the centre, 2 and its mirror,
    # 4 CIFAR-10's whole image and its centre training window, each mirrored, 10 the paper's patches
    eval_crops: int = 1
    compile_lrn: bool = True  # the LRN's kernels compiled by torch.compile (one per shape: training's few)
    progress: bool = True  # progress bar on stderr
    checkpoint_every_steps: int = 0  # >0: also checkpoint inside epochs, every this many steps
    checkpoint_every_epochs: int = 1  # epochs between epoch-end checkpoints (validated and last epochs always)
    keep_checkpoints: int = 2  # step checkpoints kept besides best.pt (last.pt is the newest)
    # Train the learning layers (optim.trainable from fc6, fc7 or fc8 on) on the frozen network's features at
    # their input, computed once for each training image and its mirror and cached in the run folder: a linear
    # probe (optim.trainable=fc8) then trains in seconds an epoch.
    cached_features: bool = False
    on_nonfinite: str = "stop"  # a nan/inf loss: stop (naming the step, last good checkpoint kept) | skip the step

    def __post_init__(self):
        _check_limits(self, "train")
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"train.device={self.device!r}: must be auto, cpu, cuda or cuda:N (e.g. cuda:1)")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"train.on_nonfinite must be stop or skip; got {self.on_nonfinite!r}")
        if self.eval_crops not in views.COUNTS:
            counts = ", ".join(map(str, views.COUNTS))
            raise ValueError(f"train.eval_crops must be one of {counts}; got {self.eval_crops}")
        if self.keep_checkpoints < 1 or self.checkpoint_every_steps < 0 or self.checkpoint_every_epochs < 1:
            raise ValueError("train.keep_checkpoints and train.checkpoint_every_epochs must be >= 1 and "
                             "train.checkpoint_every_steps >= 0")


def _model_from_data() -> ModelConfig:
    """A run's model: fc8 gets as many outputs as the training data has classes (``num_classes``
    None until the run has read its data) unless ``model.num_classes`` is given."""
    return ModelConfig(num_classes=None)


@dataclass
class InitConfig:
    """Where a fine-tuned run started (``alexnet train --init CKPT``): the checkpoint, and its sha256 (the run
    fills it in). Empty: a run from the model's own initialisation."""

    path: str = ""
    sha256: str = ""


@dataclass
class RunConfig:
    seed: int = 0
    recipe: str = "cifar10"
    model: ModelConfig = field(default_factory=_model_from_data)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self):
        _check_run(self)


def _check_run(config: RunConfig) -> None:
    """What no one section can check alone: a low-resolution or shrink size the network cannot take
    (fc6 is built for model.input_size), and validation views the dataset cannot give."""
    size, model, d = config.data.low_res_size, config.model, config.data
    _check_limits(config)
    _check_limits(model, "model")
    if (side := pool5_side(model, model.input_size)) < 1:
        raise ValueError(f"model.input_size={model.input_size} leaves the {model.variant} network a pool5 map of "
                         f"{side}x{side}; give at least the variant's usual size (224, cifar 32)")
    if size and d.low_res_epochs and not _fits(model, size):
        fits = [s for s in range(8, model.input_size + 1) if _fits(model, s)]
        hint = f"choose one of {fits[0]}..{fits[-1]}" if fits else "set data.low_res_size=0"
        raise ValueError(f"data.low_res_size={size} gives the {model.variant} network another pool5 map than "
                         f"model.input_size={model.input_size}, so fc6 cannot take it; {hint}")
    if not config.init.path and (why := views.refusal(d.dataset, config.train.eval_crops)):
        # a fine-tune validates through its init's input, whatever the data: train.finetune.check_views
        raise ValueError(f"train.eval_crops={config.train.eval_crops}: {why}")
    shrink = d.shrink_size
    if shrink and d.shrink_epochs and not (shrink <= model.input_size and pool5_side(model, shrink) >= 1):
        raise ValueError(f"data.shrink_size={shrink} leaves the {model.variant} network no pool5 map or is larger "
                         f"than model.input_size={model.input_size}; choose a size between the two, or 0")
    first = trainable_layers(config.optim.trainable)[0]
    if config.train.cached_features and first not in ("fc6", "fc7", "fc8"):
        raise ValueError(f"train.cached_features trains on features a frozen network computed once: optim.trainable "
                         f"must start at fc6, fc7 or fc8 (e.g. fc8, a linear probe); got {config.optim.trainable!r}")
    if config.train.cached_features and model.tower_devices:
        raise ValueError("train.cached_features runs the frozen network once on one device: drop model.tower_devices "
                         "(a probe's fc8 is small enough for any one device)")


def _fits(model: ModelConfig, size: int) -> bool:
    if size > model.input_size:
        return False
    side = pool5_side(model, size)
    return side >= 1 if model.variant == "torchvision" else side == pool5_side(model, model.input_size)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "init": InitConfig}


def recipe_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files("alexnet.recipes").iterdir()
                  if p.name.endswith(".toml"))


def read_recipe(name_or_file: str) -> dict[str, Any]:
    """A recipe by name (``cifar10``, ``paper``) or a path to a TOML file (one ending in .toml, or any
    existing file: a folder that happens to share a recipe's name, such as ``finetune/``, is not one)."""
    path = Path(name_or_file)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise UsageError(f"recipe file {path} not found; give a TOML file or one of: {', '.join(recipe_names())}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"recipe file {path} is not TOML text (not UTF-8: a binary file?); give a .toml recipe "
                             f"or one of: {', '.join(recipe_names())}") from None
    else:
        if name_or_file not in recipe_names():
            raise UsageError(f"unknown recipe {name_or_file!r}; choose one of: {', '.join(recipe_names())} "
                             "or a .toml file")
        text = resources.files("alexnet.recipes").joinpath(f"{name_or_file}.toml").read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"recipe {name_or_file}: invalid TOML: {err}") from None


def valid_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def parse_override(text: str) -> tuple[str, Any]:
    """``optim.lr=0.02`` -> ("optim.lr", 0.02); values are TOML, bare words are strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"override {text!r} is not key=value (e.g. optim.lr=0.02)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def build_config(recipe: dict[str, Any], overrides: list[str] = (),
                 data_path: str | os.PathLike | None = None, under: dict[str, Any] | None = None) -> RunConfig:
    """Recipe values, then ``key=value`` overrides, checked against the dataclasses; ``data_path``
    (a command's ``--data``) is ``data.path``. ``under``: flat values the recipe and overrides may change
    (a fine-tune's network, taken from its ``--init`` checkpoint)."""
    flat = {**(under or {}), **flatten(recipe)}
    flat.update(parse_override(o) for o in overrides)
    if data_path is not None:
        flat["data.path"] = str(data_path)
    _older_spellings(flat)
    if unknown := sorted(k for k in flat if k not in valid_keys()):
        raise UsageError(unknown_key(unknown[0]))
    return from_flat(flat)


def unknown_key(key: str) -> str:
    """The message for a key no dataclass has: the nearest valid key (a misspelling), then all of them."""
    near = difflib.get_close_matches(key, valid_keys(), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    keys = valid_keys()
    return f"unknown config key {key!r}; {hint}valid keys: {' '.join(keys)}"


def _older_spellings(flat: dict[str, Any]) -> None:
    """Recipes and command lines of the older format (checkpoints: ``runs.checkpoint.upgrade``) in this one,
    with a note: ``train.eval_flip`` and ``train.eval_crops=0`` are ``train.eval_crops`` 1 or 2 views,
    ``model.num_classes=0`` leaves fc8's classes to the data."""
    notes = []
    if "train.eval_flip" in flat:
        flip = bool(flat.pop("train.eval_flip"))
        if flat.get("train.eval_crops"):
            notes.append(f"train.eval_flip is left out: train.eval_crops={flat['train.eval_crops']} sets the views")
        else:
            flat["train.eval_crops"] = 2 if flip else 1
            notes.append(f"train.eval_flip is train.eval_crops={flat['train.eval_crops']}")
    elif flat.get("train.eval_crops") == 0:
        flat["train.eval_crops"] = 1
        notes.append("train.eval_crops=0 is train.eval_crops=1")
    if flat.get("model.num_classes") == 0:
        del flat["model.num_classes"]
        notes.append("model.num_classes=0 is no model.num_classes (fc8 follows the data)")
    for note in notes:
        print(f"alexnet: an older spelling: {note}", file=sys.stderr)


def from_flat(flat: dict[str, Any]) -> RunConfig:
    top = {k: v for k, v in flat.items() if "." not in k}
    _check_types(RunConfig, "", top)
    sections = {}
    for name, cls in SECTIONS.items():
        values = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(name + ".")}
        sections[name] = _make(cls, name, values)
    if sections["model"].num_classes is None and sections["data"].dataset == "cifar10":
        from .data.cifar.decode import CLASSES  # CIFAR-10's class count is known without reading the data

        sections["model"] = dataclasses.replace(sections["model"], num_classes=len(CLASSES))
    try:
        return RunConfig(**top, **sections)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _make(cls, section: str, values: dict[str, Any]):
    if cls is ModelConfig:
        values.setdefault("num_classes", None)  # from the data, see _model_from_data
    _check_types(cls, section, values)
    try:
        return cls(**values)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _check_types(cls, section: str, values: dict[str, Any]) -> None:
    """``values`` of the dataclass ``cls``, each of its field's type (TOML lists as tuples, ints as floats where a
    float is expected), or a one-line error naming the key, the value and the type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        expected, name = str(fields[key].type), f"{section}.{key}" if section else key
        if "tuple" in expected and isinstance(value, list):
            values[key] = tuple(value)
        elif expected == "float" and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not _type_ok(expected, values[key]):
            default = fields[key].default
            example = list(default) if isinstance(default, tuple) else default
            raise UsageError(f"{name} must be {expected}, got {value!r} ({type(value).__name__}); "
                             f"e.g. {name}={example!r}")


def _type_ok(expected: str, value: Any) -> bool:
    checks = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool), "float": lambda v: isinstance(v, float),
              "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}
    if expected.endswith(" | None"):  # left out: None; given: the type before it
        return value is None or _type_ok(expected.removesuffix(" | None"), value)
    if expected.startswith("tuple"):
        return isinstance(value, tuple)
    return checks.get(expected, lambda v: True)(value)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config (a recipe, ``to_dict``'s or a stored config.toml) as ``{"section.key": value}``;
    tuples become lists, as TOML stores them, so stored and current configs compare equal."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_toml(config: RunConfig) -> str:
    """The config as TOML; a value left out (None: fc8's classes before the data is read) is not written."""
    tree = {section: {k: v for k, v in values.items() if v is not None} if isinstance(values, dict) else values
            for section, values in to_dict(config).items()}
    return tomli_w.dumps(tree)
