"""A run that does not learn says so: one ``warning:`` line after each stuck epoch.

A network that gives every image the same output has a training loss of ln(classes) (the
softmax is uniform), or it names one class for every image. Either, for a whole epoch, means the
run is stuck, not slow: the usual causes on the ImageNet path are the paper's N(0, 0.01) start
with biases of 1, which with fewer than about 20 classes is unstable at lr 0.01 and at any class
count passes almost nothing of the image to fc7 at first (docs/paper-recipe.md), and He
initialisation on unscaled 0..255 inputs, which explodes. The warning names the recipe and the
switch that help.
"""

from __future__ import annotations

import math

LOSS_TOLERANCE = 0.01  # within 1% of ln(classes): the uniform softmax
ONE_CLASS_SHARE = 0.99  # this share of the images predicted as one class: one class for all


def stuck_reason(train_loss: float, classes: int, train_mode_share: float,
                 val_top_class_share: float | None = None) -> str | None:
    """Why an epoch with these numbers did not learn, or None when it did.

    ``train_mode_share``: the share of training images predicted as their batch's most frequent
    class; ``val_top_class_share``: the share of validation images predicted as the most frequent
    class (None: no validation this epoch).
    """
    if classes < 2:
        return None
    chance = math.log(classes)
    if abs(train_loss - chance) <= LOSS_TOLERANCE * chance:
        return (f"its training loss {train_loss:.4f} is within 1% of ln({classes}) = {chance:.4f}, "
                "the loss of the same prediction for every image")
    if train_mode_share >= ONE_CLASS_SHARE:
        return f"{train_mode_share:.1%} of its training images were predicted as their batch's most frequent class"
    if val_top_class_share is not None and val_top_class_share >= ONE_CLASS_SHARE:
        return f"{val_top_class_share:.1%} of the validation images were predicted as one class"
    return None


# At the paper's init each fc7 unit sits near its bias of 1 for every image: |mean fc7|^2 is about
# 1.9 per unit (7,758 for the paper's 4,096, measured on CIFAR-10 photos by benchmarks/paper_start.py).
FC7_MEAN_SQUARE_PER_UNIT = 1.9


def stable_lr(classes: int, fc7_units: int, momentum: float) -> float:
    """The largest learning rate at which SGD stays stable along fc8's class-prior direction at the
    paper's init: 2 (1 + momentum) / curvature, curvature ~ |mean fc7|^2 / classes (docs/paper-recipe.md)."""
    return 2 * (1 + momentum) * classes / (FC7_MEAN_SQUARE_PER_UNIT * fc7_units)


def advice(config, classes: int, fc7_units: int) -> str:
    """The recipe and the switch that help a stuck run of ``config``."""
    if config.init.path:  # a fine-tune: the init's features are there; the new fc8 or the rate is at fault
        probe = "" if config.train.cached_features else ", or --recipe probe"
        return (f"a fine-tune from {config.init.path}: try a lower learning rate (optim.lr={config.optim.lr / 10:g})"
                + ("" if config.optim.trainable == "fc8" else ", fc8 alone (optim.trainable=fc8)") + probe)
    if config.model.init == "paper":
        bound = stable_lr(classes, fc7_units, config.optim.momentum)
        if config.optim.lr > bound:
            suggested = float(f"{bound / 2:.1g}")
            return (f"with {classes} classes the paper's init (biases of 1) is unstable above lr {bound:.2g} "
                    f"(docs/paper-recipe.md): try --recipe imagenet, or optim.lr={suggested:g}")
        return ("the paper's N(0, 0.01) init passes almost nothing of the image to fc7 at first and can take many "
                "epochs to leave this plateau (docs/paper-recipe.md): try --recipe imagenet")
    if config.data.dataset == "imagenet" and not config.data.standardize:
        return "He init on unscaled 0..255 inputs explodes: try --recipe imagenet, or data.standardize=true"
    lower = f"a lower learning rate (optim.lr={config.optim.lr / 10:g})"
    return f"try {lower}" if config.recipe == "imagenet" else f"try --recipe imagenet, or {lower}"


def stall_warning(epoch: int, train_loss: float, classes: int, train_mode_share: float,
                  val_top_class_share: float | None, config, fc7_units: int) -> str | None:
    """The one ``warning:`` line for a stuck epoch, or None."""
    reason = stuck_reason(train_loss, classes, train_mode_share, val_top_class_share)
    if reason is None:
        return None
    return f"warning: the run is stuck: in epoch {epoch} {reason}; {advice(config, classes, fc7_units)}"
