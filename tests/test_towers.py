"""model.tower_devices: the paper's two-device split gives the groups=2 network's outputs and gradients."""

import dataclasses
import json

import pytest
import torch

from alexnet import AlexNet, ModelConfig

CIFAR = ModelConfig(variant="cifar", input_size=32, width=0.25, num_classes=10)
PAPER = ModelConfig(width=0.25, num_classes=10)


def pair(config: ModelConfig, devices: str, dropout: float = 0.5):
    """The groups=2 network and the two-tower one with the same state_dict."""
    plain = AlexNet(dataclasses.replace(config, dropout=dropout, init="kaiming"))
    split = AlexNet(dataclasses.replace(config, dropout=dropout, init="kaiming", tower_devices=devices))
    split.load_state_dict(plain.state_dict())
    return plain, split


def assert_same_outputs(plain, split, x):
    out_split = split(x)
    assert out_split.device == split.tower_devices[0]
    torch.testing.assert_close(out_split.cpu(), plain(x), rtol=1e-5, atol=1e-5)
    return out_split


def assert_same_gradients(plain, split, x):
    """Train mode (dropout 0): the same logits and the same gradient of every parameter."""
    plain.train(), split.train()
    out, out_split = plain(x), assert_same_outputs(plain, split, x)
    target = torch.arange(len(x)) % out.shape[1]
    torch.nn.functional.cross_entropy(out, target).backward()
    torch.nn.functional.cross_entropy(out_split, target.to(out_split.device)).backward()
    grads = split_gradients(split)
    assert list(grads) == [name for name, _ in plain.named_parameters()]
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-5, msg=name)


def split_gradients(split) -> dict:
    """The split network's gradients under the whole layers' names (tower 0's half, then tower 1's)."""
    grads = {}
    for name, p in split.named_parameters():
        layer, _, kind = name.rpartition(".")
        if layer.endswith((".a", ".b")):
            whole = f"{layer[:-2]}.{kind}"
            grads[whole] = torch.cat([grads[whole], p.grad.cpu()]) if whole in grads else p.grad.cpu()
        else:
            grads[name] = p.grad.cpu()
    return grads


@pytest.mark.parametrize("config, size", [(CIFAR, 32), (PAPER, 224)], ids=["cifar", "paper"])
def test_towers_match_the_grouped_network(config, size):
    plain, split = pair(config, "cpu,cpu", dropout=0.0)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():  # eval mode: logits, and features() gathered on the first device
        plain.eval(), split.eval()
        assert_same_outputs(plain, split, x)
        torch.testing.assert_close(split.features(x), plain.features(x), rtol=1e-5, atol=1e-5)
    assert_same_gradients(plain, split, x)


@torch.no_grad()
def test_towers_lrn_window_crosses_the_tower_boundary_as_groups_2_does():
    """Large activations: the LRN's boundary channels would differ if its window stopped at the boundary."""
    plain, split = pair(CIFAR, "cpu, cpu")
    assert_same_outputs(plain.eval(), split.eval(), torch.randn(2, 3, 32, 32) * 100)


def test_state_dict_is_the_grouped_networks():
    plain, split = pair(CIFAR, "cpu,cpu")
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert list(split.state_dict()) == list(shapes)  # the same keys in the same order
    assert {k: v.shape for k, v in split.state_dict().items()} == shapes
    assert list(shapes)[:2] == ["conv1.weight", "conv1.bias"] and "fc8.bias" in shapes
    for key, value in plain.state_dict().items():  # and the same values, both ways
        assert torch.equal(split.state_dict()[key], value), key
    again = AlexNet(plain.config)
    again.load_state_dict(split.state_dict())
    assert all(torch.equal(again.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert torch.equal(split.conv1.weight, plain.conv1.weight)  # read whole, e.g. for Figure 3


def test_each_towers_layers_live_on_its_device():
    """Placement without a second GPU: tower 1 on the meta device (which holds no data), kept there
    through a cast of the whole model. (test_towers_on_cuda checks that .to("cuda:0") keeps it too.)"""
    model = AlexNet(dataclasses.replace(CIFAR, tower_devices="cpu,meta"))
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        layer = getattr(model, name)
        assert layer.a.weight.device.type == "cpu" and layer.b.weight.device.type == "meta", name
        assert layer.a.weight.shape[0] == layer.b.weight.shape[0]
    assert model.conv2.a.weight.shape[1] == model.conv1.a.weight.shape[0]  # conv2: its own tower's half only
    assert model.conv3.a.weight.shape[1] == 2 * model.conv2.a.weight.shape[0]  # conv3: both towers
    model.to("cpu", torch.float64)  # a device move leaves the towers where they are; the cast applies
    assert model.fc7.b.weight.device.type == "meta" and model.fc8.weight.device.type == "cpu"
    assert model.fc7.a.weight.dtype == model.fc7.b.weight.dtype == torch.float64
    halves = sum(p.numel() for p in model.parameters())
    assert halves == sum(p.numel() for p in AlexNet(CIFAR).parameters())  # nothing duplicated


def test_fc_features_of_a_split_network():
    from alexnet import features

    plain, split = pair(CIFAR, "cpu,cpu", dropout=0.5)
    x = torch.randn(2, 3, 32, 32)
    for layer in ("pool5", "fc6", "fc7", "fc8"):
        torch.testing.assert_close(features(split, x, layer), features(plain, x, layer), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["cpu", "cpu,cpu,cpu", "cpu,", "cpu,gpu0", ",cpu"])
def test_bad_tower_devices_are_rejected(spec):
    with pytest.raises(ValueError, match="two comma-separated devices"):
        dataclasses.replace(CIFAR, tower_devices=spec)


@pytest.mark.parametrize("change", [{"variant": "torchvision", "input_size": 224}, {"towers": False},
                                    {"towers": False, "one_gpu": True}])
def test_tower_devices_need_the_two_tower_net(change):
    with pytest.raises(ValueError, match="model.towers=true"):
        dataclasses.replace(CIFAR, tower_devices="cpu,cpu", **change)


@pytest.mark.cuda
def test_towers_on_cuda(cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    devices = "cuda:0,cuda:1" if torch.cuda.device_count() > 1 else "cuda:0,cuda:0"
    plain, split = pair(CIFAR, devices, dropout=0.0)
    split.to("cuda:0")  # moves fc8 only: each tower's halves stay on their device
    assert split.conv5.b.weight.device == torch.device(devices.split(",")[1]) and split.fc8.weight.is_cuda
    assert_same_gradients(plain, split, torch.randn(2, 3, 32, 32))  # the towers move the input


@pytest.mark.slow
def test_a_split_run_trains_resumes_and_its_checkpoint_loads_into_the_grouped_network(tmp_path, data_cache):
    """train with tower_devices (freeze phase included), resume it, and read its checkpoint as groups=2."""
    from alexnet.cli import main
    from alexnet.runs.load import load_run
    from fixtures import TARBALL, tiny_training

    out = tmp_path / "run"
    args = ["train", "--recipe", "cifar10", "--data", str(TARBALL), "--out", str(out),
            *tiny_training("model.tower_devices=cpu,cpu", "data.low_res_epochs=0", "optim.freeze_after=[1]",
                           "train.precision=fp32", limit=128, data=None)]
    assert main([*args, "optim.epochs=1"]) == 0
    assert main(["train", "--out", str(out), "--resume", "optim.epochs=2"]) == 0
    split = load_run(out / "checkpoints" / "last.pt", keep_towers=True)
    assert split.config.model.tower_devices == "cpu,cpu" and split.config.optim.epochs == 2
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    plain = load_run(out / "checkpoints" / "last.pt")  # inference commands: the one-device groups=2 network
    assert plain.config.model.tower_devices == "" and plain.model.conv2.groups == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(split.model(x), plain.model(x), rtol=1e-5, atol=1e-5)
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "data.val_limit=64"]) == 0
    # the optimiser state is per half: continuing without the split is refused in one line
    assert main(["train", "--out", str(out), "--resume", "optim.epochs=3", "model.tower_devices="]) == 2
