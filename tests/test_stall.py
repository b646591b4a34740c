"""A stuck run prints one ``warning:`` line that names the recipe and the switch that help."""

import math

import pytest

from alexnet.cli import main
from alexnet.config import build_config, read_recipe
from alexnet.train.stall import stall_warning, stuck_reason
from fixtures import tiny_training


def test_a_loss_at_ln_classes_is_stuck_and_one_just_below_is_not():
    assert stuck_reason(math.log(10) * 1.005, 10, 0.3) is not None
    assert stuck_reason(math.log(10) * 0.985, 10, 0.3) is None
    assert stuck_reason(math.log(1000), 1000, 0.01) is not None
    assert stuck_reason(0.0, 1, 1.0) is None  # one class: nothing to learn


def test_one_class_for_every_image_is_stuck_whatever_the_loss():
    assert "training images" in stuck_reason(11.5, 10, 0.995)  # the paper recipe's blown-up start
    assert "validation images" in stuck_reason(1.2, 10, 0.5, val_top_class_share=1.0)
    assert stuck_reason(1.2, 10, 0.5, val_top_class_share=0.4) is None


def test_the_warning_names_the_recipe_and_the_switch():
    paper = build_config(read_recipe("paper"))
    line = stall_warning(1, 2.3030, 10, 0.2, 1.0, paper, 4096)
    assert line.startswith("warning: the run is stuck") and "\n" not in line
    assert "--recipe imagenet" in line and "unstable above lr 0.0049" in line and "optim.lr=0.002" in line
    many = stall_warning(1, 6.9, 1000, 0.2, 1.0, paper, 4096)  # stable at 1000 classes: only the slow start
    assert "--recipe imagenet" in many and "optim.lr" not in many
    unscaled = build_config(read_recipe("imagenet"), ["data.standardize=false"])
    assert "data.standardize=true" in stall_warning(2, 2.3030, 10, 0.2, None, unscaled, 4096)
    already = stall_warning(2, 2.3030, 10, 0.2, None, build_config(read_recipe("imagenet")), 4096)
    assert "--recipe" not in already and "optim.lr=0.001" in already  # not the recipe it runs
    assert stall_warning(1, 1.5, 10, 0.2, 0.3, paper, 4096) is None


def test_the_stable_rate_is_measured_on_the_paper_init():
    from alexnet.train.stall import stable_lr

    assert 0.004 < stable_lr(10, 4096, 0.9) < 0.006  # benchmarks/paper_start.py measured 0.0049
    assert stable_lr(1000, 4096, 0.9) > 0.4


@pytest.mark.slow
def test_a_run_that_predicts_one_class_prints_the_warning(tmp_path, capsys, data_cache):
    """The paper's init with a frozen network (lr 0): biases of 1 give every image the same logits."""
    args = ["train", "--recipe", "paper", "--out", str(tmp_path / "stuck"), "data.dataset=cifar10",
            "model.variant=cifar",
            "model.input_size=32", "model.dropout=0", "optim.lr=0", *tiny_training(limit=128)]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "stuck: in epoch 1" in warnings[0] and "--recipe imagenet" in warnings[0]
