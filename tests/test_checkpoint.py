import os
import pickle

import pytest
import torch

from alexnet import AlexNet, ModelConfig, load_model, save_checkpoint
from alexnet.runs.checkpoint import load_checkpoint
from alexnet.errors import UsageError


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
