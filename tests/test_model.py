import pytest
import torch
import torchvision

from alexnet import AlexNet, ModelConfig
from alexnet.nn.model import count_parameters


def test_paper_parameter_counts():
    assert count_parameters(AlexNet(ModelConfig())) == 60_965_224
    assert count_parameters(AlexNet(ModelConfig(towers=False))) == 62_378_344


@pytest.mark.parametrize("size, conv1_map", [(224, 55), (227, 56)])
def test_paper_shapes(size, conv1_map):
    model = AlexNet(ModelConfig()).eval()
    x = torch.zeros(2, 3, size, size)
    assert model.conv1(x).shape[-1] == conv1_map
    assert model.features(x, "pool5").shape == (2, 256 * 6 * 6)
    assert model(x).shape == (2, 1000)


def test_towers_are_grouped_where_the_paper_splits():
    model = AlexNet(ModelConfig())
    assert [m.groups for m in (model.conv1, model.conv2, model.conv3, model.conv4, model.conv5)] == [1, 2, 1, 2, 2]
    assert all(m.groups == 1 for m in AlexNet(ModelConfig(towers=False)).layers()[:5])


def test_paper_init():
    model = AlexNet(ModelConfig())
    for layer in model.layers():
        w = layer.weight
        assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.01) < 1e-3, layer
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        bias = getattr(model, name).bias
        assert torch.all(bias == (1.0 if name in ones else 0.0)), name


def test_ablation_switches():
    x = torch.randn(1, 3, 224, 224)
    nets = {}  # the switches do not depend on the width: a quarter-width net builds four times faster
    for name, cfg in (("tanh", ModelConfig(activation="tanh", width=0.25)),
                      ("lrn", ModelConfig(lrn=False, width=0.25)),
                      ("pool", ModelConfig(overlap_pool=False, width=0.25)),
                      ("dropout", ModelConfig(dropout=0.0, width=0.25)),
                      ("classes", ModelConfig(num_classes=10, width=0.25))):
        nets[name] = AlexNet(cfg).eval()
        out = nets[name](x)
        assert out.shape == (1, cfg.num_classes) and torch.isfinite(out).all()
    assert isinstance(nets["tanh"].act, torch.nn.Tanh)
    assert nets["pool"].pool.kernel_size == 2
    assert isinstance(nets["lrn"].lrn1, torch.nn.Identity)
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(activation="sigmoid")


def test_torchvision_weights_load_and_match():
    reference = torchvision.models.alexnet().eval()
    model = AlexNet(ModelConfig(variant="torchvision")).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(model(x), reference(x))
    assert count_parameters(model) == count_parameters(reference)


def test_cifar_variant_is_alexnet_shaped():
    model = AlexNet(ModelConfig(variant="cifar", num_classes=10, input_size=32, init="kaiming"))
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert model.conv2.groups == 2 and model.pool.kernel_size == 3 and model.pool.stride == 2
    assert not isinstance(model.lrn1, torch.nn.Identity)
    small = AlexNet(ModelConfig(variant="cifar", num_classes=10, input_size=32, width=0.25, conv2_kernel=3))
    assert small.conv2.kernel_size == (3, 3) and small.conv2.padding == (1, 1) and small.conv2.groups == 2
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # the map sizes, hence fc6, are unchanged
    with pytest.raises(ValueError, match="conv2_kernel must be odd"):
        ModelConfig(conv2_kernel=4)


def test_fc7_features_are_the_last_hidden_layer():
    model = AlexNet(ModelConfig(variant="cifar", num_classes=10, input_size=32)).eval()
    feats = model.features(torch.randn(3, 3, 32, 32), "fc7")
    assert feats.shape == (3, model.fc7.out_features) and (feats >= 0).all()


def test_one_gpu_net_is_the_papers_comparison_net():
    """Section 3.2: half the kernels in conv1-conv4, conv5 and the FC layers full, about the same size."""
    net = AlexNet(ModelConfig(towers=False, one_gpu=True))
    assert [net.conv1.out_channels, net.conv2.out_channels, net.conv3.out_channels, net.conv4.out_channels,
            net.conv5.out_channels] == [48, 128, 192, 192, 256]
    assert net.conv2.groups == 1 and sum(p.numel() for p in net.parameters()) == 59_798_312
    with pytest.raises(ValueError, match="towers=false"):
        ModelConfig(one_gpu=True)


def test_golden_output_of_the_paper_network():
    """The paper's network at a fixed seed on fixed input gives the stored logits and pool5 features
    (tests/golden/make_paper_logits.py wrote them; a change here changes the network)."""
    from golden.make_paper_logits import GOLDEN, paper_outputs
    from safetensors.torch import load_file

    stored, now = load_file(str(GOLDEN)), paper_outputs()
    for key in ("logits", "pool5"):
        torch.testing.assert_close(now[key], stored[key], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_the_paper_network_overfits_one_batch():
    """Every layer passes gradients (LRN's hand-written backward, the towers' grouped convolutions):
    the paper's network memorises two images with two labels (about 20 Adam steps)."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    # half width: every layer and both towers, a quarter of the work
    model = AlexNet(ModelConfig(num_classes=10, dropout=0.0, init="kaiming", width=0.5)).train()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([3, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=OVERFIT_LR)
    first = None
    for _ in range(OVERFIT_STEPS):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.1:
            break
    assert first > 1.0 and loss.item() < 0.1
    assert torch.equal(model.eval()(x).argmax(1), y)


OVERFIT_LR, OVERFIT_STEPS = 3e-4, 30
