"""model.tower_devices: the paper's two-device split gives the groups=2 network's outputs and gradients."""

import dataclasses

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
    for (name, p), q in zip(plain.named_parameters(), split.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-5, atol=1e-5, msg=name)


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
    assert {k: v.shape for k, v in split.state_dict().items()} == shapes
    assert list(shapes)[:2] == ["conv1.weight", "conv1.bias"] and "fc8.bias" in shapes


@pytest.mark.parametrize("spec", ["cpu", "cpu,cpu,cpu", "cpu,", "cpu,gpu0", ",cpu"])
def test_bad_tower_devices_are_rejected(spec):
    with pytest.raises(ValueError, match="two comma-separated devices"):
        dataclasses.replace(CIFAR, tower_devices=spec)


@pytest.mark.parametrize("change", [dict(variant="torchvision", input_size=224), dict(towers=False),
                                    dict(towers=False, one_gpu=True)])
def test_tower_devices_need_the_two_tower_net(change):
    with pytest.raises(ValueError, match="model.towers=true"):
        dataclasses.replace(CIFAR, tower_devices="cpu,cpu", **change)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_towers_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    devices = "cuda:0,cuda:1" if torch.cuda.device_count() > 1 else "cuda:0,cuda:0"
    plain, split = pair(CIFAR, devices, dropout=0.0)
    split.to("cuda:0")  # the parameters live on the first device; tower 1's slices are copied to its own
    assert_same_gradients(plain, split, torch.randn(2, 3, 32, 32))  # the towers move the input
