import os
import pickle

import pytest
import torch

from alexnet import AlexNet, ModelConfig, load_model, save_checkpoint
from alexnet.errors import UsageError
from alexnet.runs.checkpoint import load_checkpoint


def small_model():
    return AlexNet(ModelConfig(variant="cifar", num_classes=10, input_size=32, width=0.25))


def test_round_trip_restores_config_and_outputs(tmp_path):
    model = small_model().eval()
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Boom()}, f, protocol=2)
    with pytest.raises(UsageError, match="refused"):
        load_checkpoint(path)


def test_missing_and_truncated_checkpoints(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    path = save_checkpoint(tmp_path / "m.pt", small_model())
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UsageError):
        load_checkpoint(path)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", small_model())
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, small_model())
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_that_does_not_fit_is_refused_naming_the_layer(tmp_path, capsys):
    from alexnet.cli import main

    ckpt = save_checkpoint(tmp_path / "m.pt", small_model())
    assert main(["eval", "--checkpoint", str(ckpt), "model.num_classes=1000"]) == 2
    err = capsys.readouterr().err
    assert "fc8.weight" in err and "1000" in err and len(err.strip().splitlines()) == 1


def test_a_checkpoint_of_the_older_format_is_read_through_one_upgrade(tmp_path):
    """v1: validation views as train.eval_flip (eval_crops 0), fc8's classes from the data as 0, and a
    pipeline whose mean kind was read from the mean's shape, without stored side or resize."""
    from alexnet import load_run
    from alexnet.runs.checkpoint import FORMAT

    model = AlexNet(ModelConfig(num_classes=3, width=0.25)).eval()
    mean = torch.full((3, 256, 256), 100.0)
    v1 = {"format": "alexnet-checkpoint-v1", "model": model.state_dict(),
          "config": {"recipe": "paper", "model": {"num_classes": 3, "width": 0.25}, "data": {"dataset": "imagenet"},
                     "train": {"eval_flip": True, "eval_crops": 0}},
          "classes": [{"index": i, "wnid": f"n{i}", "name": str(i)} for i in range(3)],
          "pipeline": {"kind": "imagenet", "size": 224, "padding": 0, "flip": True, "mean": mean, "std": None}}
    torch.save(v1, tmp_path / "v1.pt")
    loaded = load_run(tmp_path / "v1.pt")
    assert loaded.checkpoint["format"] == FORMAT and loaded.config.train.eval_crops == 2
    p = loaded.pipeline
    assert (p.mean_kind, p.stored, p.resize, p.size) == ("image", 256, "center", 224)
    channel = {**v1, "pipeline": {**v1["pipeline"], "mean": torch.full((3, 1, 1), 100.0)}}
    channel["config"] = {**v1["config"], "train": {"eval_flip": False}, "model": {"num_classes": 0, "width": 0.25}}
    torch.save(channel, tmp_path / "channel.pt")
    loaded = load_run(tmp_path / "channel.pt", ["model.num_classes=3"])
    assert (loaded.pipeline.mean_kind, loaded.pipeline.stored, loaded.config.train.eval_crops) == ("channel", 224, 1)
    torch.save({**v1, "format": "alexnet-checkpoint-v9"}, tmp_path / "v9.pt")
    with pytest.raises(UsageError, match="format 'alexnet-checkpoint-v9'"):
        load_checkpoint(tmp_path / "v9.pt")


def test_a_v1_checkpoint_that_stored_its_training_pipeline_is_tested_through_its_last_windows(tmp_path):
    """Some v1 CIFAR-10 checkpoints stored the training pipeline (32 with padding 4) of a run whose epochs were
    all low-resolution 28x28 windows: it is tested at 28 without padding, on 32x32 images, as v1 loading did;
    a v1 mid-epoch checkpoint's two running sums become four."""
    from alexnet.runs.checkpoint import upgrade

    pipeline = {"kind": "cifar10", "size": 32, "padding": 4, "flip": True, "mean": torch.full((3, 1, 1), 120.0),
                "std": torch.full((3, 1, 1), 60.0), "stored": 28}
    config = {"data": {"low_res_size": 28, "low_res_epochs": 10}, "optim": {"epochs": 10}}
    ckpt = upgrade({"format": "alexnet-checkpoint-v1", "model": {}, "config": config, "pipeline": dict(pipeline),
                    "ranks": [{"rng": {}, "sums": [3.5, 7.0]}]}, "v1.pt")
    assert (ckpt["pipeline"]["size"], ckpt["pipeline"]["padding"], ckpt["pipeline"]["stored"]) == (28, 0, 32)
    assert ckpt["ranks"][0]["sums"] == [3.5, 7.0, 0.0, 0.0]
    later = {**config, "data": {"low_res_size": 28, "low_res_epochs": 5}}
    ckpt = upgrade({"format": "alexnet-checkpoint-v1", "model": {}, "config": later, "pipeline": dict(pipeline)}, "x")
    assert (ckpt["pipeline"]["size"], ckpt["pipeline"]["padding"]) == (32, 4)


def test_older_spellings_of_overrides_are_read_with_a_note(capsys):
    from alexnet.config import build_config, read_recipe

    config = build_config(read_recipe("cifar10"), ["train.eval_crops=0", "train.eval_flip=true", "model.num_classes=0"])
    assert config.train.eval_crops == 2 and config.model.num_classes == 10
    assert build_config(read_recipe("cifar10"), ["train.eval_flip=false"]).train.eval_crops == 4  # the recipe's
    assert build_config(read_recipe("cifar10"), ["train.eval_crops=0"]).train.eval_crops == 1
    err = capsys.readouterr().err
    assert "train.eval_flip is train.eval_crops=2" in err and "model.num_classes=0" in err
