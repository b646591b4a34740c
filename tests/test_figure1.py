"""`alexnet figure1`: the epochs-to-25% arithmetic, the sweep's choice, determinism, and a tiny end-to-end run."""

import json
import tempfile
from pathlib import Path

import pytest
import torch

from alexnet.cli import main
from alexnet.commands.figure1 import parse_chosen, parse_lrs
from alexnet.errors import UsageError
from alexnet.paper.figure1 import FourLayerNet, Inputs, Store, Trial, sweep, train_to
from alexnet.paper.figure1_results import crossings, epochs_to_threshold, ratio_of, table_markdown
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
    assert parse_chosen("relu=0.001, tanh=0.01") == (("relu", 0.001), ("tanh", 0.01))
    for bad in ("relu", "sigmoid=0.1", "relu=0", "tanh=x"):
        with pytest.raises(UsageError):
            parse_chosen(bad)


def test_threshold_table_over_seeds():
    curves = {"relu": [{"seed": 0, "train_error": [0.5, 0.3, 0.2, 0.1]},
                       {"seed": 1, "train_error": [0.5, 0.2, 0.1, 0.1]}],
              "tanh": [{"seed": 0, "train_error": [0.6, 0.5, 0.4, 0.2]},
                       {"seed": 1, "train_error": [0.6, 0.5, 0.4, 0.3]}]}
    rows = {r["threshold"]: r for r in crossings(curves, thresholds=(0.25, 0.3))}
    at25 = rows[0.25]
    assert at25["relu"] == [2.5, pytest.approx(1 + 0.25 / 0.3, abs=1e-3)] and at25["relu_reached"]
    assert at25["tanh"] == [3.75, 4.0] and not at25["tanh_reached"]  # seed 1 never got there: a lower bound
    assert at25["ratio"] == round(3.875 / ((2.5 + 1 + 0.25 / 0.3) / 2), 2) and at25["ratio_lower_bound"]
    assert at25["ratio_per_seed"] == [1.5, round(4.0 / (1 + 0.25 / 0.3), 2)]
    assert rows[0.3]["tanh"] == [3.5, 4.0] and rows[0.3]["tanh_reached"] and not rows[0.3]["ratio_lower_bound"]
    text = table_markdown(list(rows.values()), curves)
    assert "| 25% (the paper's) | 2.2 ± 0.5 | >3.9 ± 0.2 | >1.79 | 1.50, >2.18 |" in text
    diverged = {**curves, "tanh": [curves["tanh"][0], {"seed": 1, "train_error": [0.9], "diverged": True}]}
    row = crossings(diverged, thresholds=(0.25,))[0]
    assert row["tanh"] == [3.75, None] and row["tanh_mean"] == 3.75 and not row["tanh_reached"]
    assert row["ratio_per_seed"] == [1.5, None] and row["ratio_lower_bound"]


def test_a_stopped_run_continues_exactly_where_it_stopped(tmp_path):
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(128) % 10
    inputs = Inputs("paper", images)
    store = Store(tmp_path, {"setup": "paper", "batch_size": 32}, log=lambda _: None)
    other = Store(tmp_path / "other", {}, lambda _: None)
    whole = train_to(Trial("relu", 0.01, 1, inputs), 3, images, labels, 32, other)
    train_to(store.restore(Trial("relu", 0.01, 1, inputs)), 2, images, labels, 32, store)  # stopped after 2 epochs
    resumed = store.restore(Trial("relu", 0.01, 1, inputs))
    assert len(resumed.errors) == 2
    train_to(resumed, 3, images, labels, 32, store)
    assert resumed.errors == whole.errors and resumed.losses == whole.losses
    other = Store(tmp_path, {"setup": "paper", "batch_size": 64}, log=lambda _: None)  # other settings: not reused
    assert other.restore(Trial("relu", 0.01, 1, inputs)).errors == []
    (tmp_path / f"{resumed.name}.pt").unlink()  # the curve alone (JSON) is reused where it is long enough
    kept = train_to(store.restore(Trial("relu", 0.01, 1, inputs)), 3, images, labels, 32, store)
    assert kept.curve_only and kept.errors == whole.errors
    longer = train_to(store.restore(Trial("relu", 0.01, 1, inputs)), 4, images, labels, 32, store)  # trained again
    assert not longer.curve_only and longer.errors[:3] == whole.errors and len(longer.errors) == 4


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
    a, b = Trial("tanh", 0.01, 3, inputs), Trial("tanh", 0.01, 3, inputs)
    a.train_epoch(images, labels, 32)
    b.train_epoch(images, labels, 32)
    assert a.errors == b.errors and a.losses == b.losses
    store = Store(Path(tempfile.mkdtemp()), {}, log=lambda _: None)
    best, records = sweep("relu", [0.001, 0.05], 2, images, labels, 32, 0, inputs, store, log=lambda _: None)
    assert [r["lr"] for r in records] == [0.001, 0.05] and all(len(r["train_error"]) == 2 for r in records)
    assert best == min(records, key=lambda r: (r["train_error"][-1], r["lr"]))["lr"]  # ties: the smaller rate


@pytest.mark.slow
def test_tiny_run_writes_png_json_and_one_line(tmp_path, capsys, data_cache):
    # end to end once, with the paper setup (the modern setup's init and inputs are tested above)
    setup, lrs = "paper", (0.001, 0.01)
    out = tmp_path / "f1"
    args = ["figure1", "--out", str(out), "--data", str(TARBALL), "--limit", "256", "--batch-size", "64",
            "--epochs", "2", "--sweep-epochs", "1", "--lrs", ",".join(map(str, lrs)), "--setup", setup,
            "--seeds", "0,1"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("relu_epochs_to_25pct", "tanh_epochs_to_25pct", "ratio", "tanh_lower_bound", "relu_lr", "tanh_lr"):
        assert key in result
    assert result["seeds"] == [0, 1] and len(result["ratio_per_seed"]) == 2
    assert (out / "figure1.png").stat().st_size > 1000
    record = json.loads((out / "figure1.json").read_text())
    assert set(record["sweep"]) == {"relu", "tanh"} and len(record["sweep"]["relu"]) == 2
    for curves in record["curves"].values():  # every curve over the same range, one per seed
        assert [c["seed"] for c in curves] == [0, 1] and all(len(c["train_error"]) == 2 for c in curves)
        assert curves[0]["lr"] in lrs and curves[0]["train_error"] != curves[1]["train_error"]
    assert [r["threshold"] for r in record["thresholds"]] == [0.22, 0.24, 0.25, 0.26, 0.27, 0.3]
    assert record["summary"] == result and result["setup"] == record["setup"]["setup"] == setup
    assert "| 25% (the paper's) |" in (out / "figure1.md").read_text()

    # the same rates given, seeds 1 and 2 (as a second process would): seed 1 is reused, seed 2 trained
    given = ["--lr", f"relu={result['relu_lr']},tanh={result['tanh_lr']}", "--seeds", "1,2"]
    assert main([*args, *given]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("continuing from epoch 2") == 2 and captured.err.count("seed2 epoch 1: training") == 2
    again = json.loads(captured.out)
    assert again["relu_per_seed"][0] == result["relu_per_seed"][1] and again["seeds"] == [1, 2]


def test_bad_options_exit_2(tmp_path, capsys):
    assert main(["figure1", "--out", str(tmp_path), "--lrs", "fast"]) == 2
    assert "--lrs" in capsys.readouterr().err
    assert main(["figure1", "--out", str(tmp_path), "--sweep-epochs", "5", "--epochs", "2"]) == 2
    assert main(["figure1", "--out", str(tmp_path), "--seeds", "0,0"]) == 2
    assert main(["figure1", "--out", str(tmp_path), "--lr", "relu=fast"]) == 2
