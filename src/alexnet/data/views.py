"""Test views: how many views of each image are averaged, the one list of what may be asked for, and
the one rule for which views a network can take.

Section 4.1: "At test time, the network makes a prediction by extracting five 224x224 patches (the
four corner patches and the center patch) as well as their horizontal reflections (hence ten
patches in all), and averaging the predictions made by the network's softmax layer on the ten
patches." Every command and config key that takes a number of views (``train.eval_crops``,
``alexnet eval --crops``, ``alexnet predict --crops``, ``POST /predict?crops=``) takes one of
``COUNTS`` and asks ``refusal`` whether the network can take it.
"""

from __future__ import annotations

COUNTS = (1, 2, 4, 10)
MEANING = {
    1: "the centre window",
    2: "the centre window and its mirror",
    4: "the whole image and its centre training window, each mirrored (CIFAR-10 networks)",
    10: "the paper's four corners and centre, each mirrored",
}
HELP = "views per image, softmax averaged: " + "; ".join(f"{n}: {meaning}" for n, meaning in MEANING.items())


def refusal(kind: str, views: int) -> str | None:
    """Why a network whose input pipeline is of ``kind`` (cifar10, imagenet) cannot be tested on
    ``views`` views of each image, or None when it can."""
    if views not in COUNTS:
        return f"{views} views is not one of {', '.join(map(str, COUNTS))}"
    if views == 4 and kind != "cifar10":
        return (f"the whole image and its centre window are for CIFAR-10 networks, which take both sizes; "
                f"{kind} networks cannot take their whole stored image: use 1, 2 or 10 views")
    return None
