"""`alexnet figure1`: the epochs-to-25% arithmetic, the sweep's choice, determinism, and a tiny end-to-end run."""

import json

import pytest
import torch

from alexnet.cli import main
from alexnet.errors import UsageError
from alexnet.figure1 import FourLayerNet, Inputs, Run, epochs_to_threshold, parse_lrs, ratio_of, sweep
from fixtures import TARBALL



def test_crossing_is_interpolated_between_epoch_points():
    assert epochs_to_threshold([0.5, 0.3, 0.2]) == (pytest.approx(2.5), True)  # 0.3 at 2, 0.2 at 3
    assert epochs_to_threshold([0.5, 0.25, 0.1]) == (pytest.approx(2.0), True)  # exactly on the line
    assert epochs_to_threshold([0.2]) == (pytest.approx(0.65 / 0.7), True)  # from chance 0.9 at epoch 0
    assert epochs_to_threshold([0.6, 0.2, 0.3, 0.1]) == (pytest.approx(1 + 0.35 / 0.4), True)  # the first crossing


def test_never_reached_is_a_lower_bound_at_the_last_epoch():
    assert epochs_to_threshold([0.6, 0.5, 0.4]) == (3.0, False)
    assert epochs_to_threshold([]) == (0.0, False)
    assert ratio_of((2.0, True), (3.0, False)) == pytest.approx(1.5)  # reported with tanh_lower_bound: true
    assert ratio_of((2.0, True), (12.0, True)) == pytest.approx(6.0)
    assert ratio_of((3.0, False), (12.0, True)) is None  # relu never got there: no bound


def test_learning_rate_grid_parsing():
    assert parse_lrs("0.1, 0.01,0.01") == [0.01, 0.1]
    for bad in ("", "0.1,x", "0,0.1", "-1"):
        with pytest.raises(UsageError):
            parse_lrs(bad)


@pytest.mark.parametrize("setup", ["paper", "modern"])
def test_both_nets_differ_only_in_the_activation_and_start_from_the_same_weights(setup):
    torch.manual_seed(0)
    relu = FourLayerNet("relu", setup)
    torch.manual_seed(0)
    tanh = FourLayerNet("tanh", setup)
    assert sum(p.numel() for p in relu.parameters()) == 89_578
    for (name, a), (_, b) in zip(relu.state_dict().items(), tanh.state_dict().items()):
        assert torch.equal(a, b), name
    std = relu.conv2.weight.std().item()
    assert std == pytest.approx(0.01 if setup == "paper" else 1 / (32 * 25) ** 0.5, rel=0.05)
    x = torch.randn(2, 3, 32, 32)
    assert relu(x).shape == (2, 10) and not torch.equal(relu(x), tanh(x))


def test_inputs_of_each_setup():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    paper = Inputs("paper", images)(images)  # minus the mean image, 0..255 scale
    assert paper.mean((0,)).abs().max() < 1e-3 and paper.abs().max() > 100
    modern = Inputs("modern", images)(images)  # per-channel standardised
    assert modern.abs().max() < 3 and modern.is_contiguous(memory_format=torch.channels_last)


def test_training_is_deterministic_and_the_sweep_picks_the_lowest_error():
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(128) % 10
    inputs = Inputs("modern", images)
    a, b = Run("tanh", 0.01, 3, inputs), Run("tanh", 0.01, 3, inputs)
    a.train_epoch(images, labels, 32)
    b.train_epoch(images, labels, 32)
    assert a.errors == b.errors and a.losses == b.losses
    best, records = sweep("relu", [0.001, 0.05], 2, images, labels, 32, 0, inputs, log=lambda _: None)
    assert [r["lr"] for r in records] == [0.001, 0.05] and all(len(r["train_error"]) == 2 for r in records)
    assert best.lr == min(records, key=lambda r: (r["train_error"][-1], r["lr"]))["lr"]  # ties: the smaller rate


@pytest.mark.slow
@pytest.mark.parametrize("setup, lrs", [("paper", (0.001, 0.01)), ("modern", (0.01, 0.05))])
def test_tiny_run_writes_png_json_and_one_line(tmp_path, capsys, data_cache, setup, lrs):
    out = tmp_path / "f1"
    args = ["figure1", "--out", str(out), "--data", str(TARBALL), "--limit", "512", "--batch-size", "64",
            "--epochs-cap", "2", "--sweep-epochs", "1", "--lrs", ",".join(map(str, lrs)), "--setup", setup]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("relu_epochs_to_25pct", "tanh_epochs_to_25pct", "ratio", "tanh_lower_bound", "relu_lr", "tanh_lr"):
        assert key in result
    assert (out / "figure1.png").stat().st_size > 1000
    record = json.loads((out / "figure1.json").read_text())
    assert set(record["sweep"]) == {"relu", "tanh"} and len(record["sweep"]["relu"]) == 2
    for curve in record["curves"].values():
        assert 1 <= len(curve["train_error"]) <= 2 and curve["lr"] in lrs
    assert record["summary"] == result and result["setup"] == record["setup"]["setup"] == setup


def test_bad_options_exit_2(tmp_path, capsys):
    assert main(["figure1", "--out", str(tmp_path), "--lrs", "fast"]) == 2
    assert "--lrs" in capsys.readouterr().err
    assert main(["figure1", "--out", str(tmp_path), "--sweep-epochs", "5", "--epochs-cap", "2"]) == 2
