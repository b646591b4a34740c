"""Progressive resizing (Pipeline.for_epoch) and frozen first layers (train/curriculum.py): decided by the
epoch alone; sizes the network cannot take are refused when the config is built."""


import pytest
import torch

from alexnet import AlexNet
from alexnet.config import build_config, read_recipe
from alexnet.errors import UsageError
from alexnet.nn.model import ModelConfig, pool5_side
from alexnet.train.curriculum import frozen, set_frozen
from alexnet.train.step import TrainStep


def _config(*overrides):
    return build_config(read_recipe("cifar10"), ["model.width=0.25", *overrides])


def test_pool5_side_matches_the_network():
    for config, sizes in [(ModelConfig(), (224, 227, 200)),
                          (ModelConfig(variant="cifar", input_size=32), (32, 28, 25, 24)),
                          (ModelConfig(variant="cifar", overlap_pool=False), (32, 28))]:
        net = AlexNet(config).eval()
        for size in sizes:
            with torch.no_grad():
                x = net.conv1(torch.zeros(1, 3, size, size))
                for conv in (net.conv2, net.conv5):
                    x = net.pool(x)
                    x = conv(x if conv is net.conv2 else torch.zeros(1, conv.in_channels, *x.shape[-2:]))
                side = net.pool(x).shape[-1]
            assert pool5_side(config, size) == side, (config.variant, size)


def test_low_res_size_the_network_cannot_take_is_refused_with_the_sizes_it_can():
    _config("data.low_res_size=28", "data.low_res_epochs=2")  # 28 -> 14 -> 7 -> 4, as 32
    with pytest.raises(UsageError, match=r"low_res_size=24 .* choose one of 25\.\.32"):
        _config("data.low_res_size=24", "data.low_res_epochs=2")
    with pytest.raises(UsageError, match="freeze_after"):
        _config("optim.freeze_after=[3, 2]")


def test_the_low_res_pipeline_crops_small_windows_early_and_the_full_input_later():
    from alexnet.data.pipeline import pipeline_for

    config = _config("data.low_res_size=28", "data.low_res_epochs=2")
    full = pipeline_for(config, None)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    early, late = full.for_epoch(config.data, 1), full.for_epoch(config.data, 2)
    g = torch.Generator().manual_seed(0)
    assert early.train(images, g).shape == (4, 3, 28, 28) and early.padding == 0
    assert late is full and late.train(images, g).shape == (4, 3, 32, 32)


def test_shrink_epochs_shrink_each_window_and_fc6_still_gets_its_map():
    from alexnet.data.pipeline import pipeline_for

    config = _config("data.low_res_size=28", "data.low_res_epochs=3", "data.shrink_size=16", "data.shrink_epochs=2")
    full = pipeline_for(config, None)
    early, middle = full.for_epoch(config.data, 1), full.for_epoch(config.data, 2)
    flat = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    x = early.train(flat, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, middle.train(flat, torch.Generator())[:, :, :16, :16])  # antialiased: flat stays flat
    assert middle.shrink == 0 and middle.train(flat, torch.Generator()).shape == (4, 3, 28, 28)
    model = AlexNet(config.model)
    model(x).sum().backward()  # training: pool5's 2x2 map is averaged up to fc6's 4x4
    assert model.fc6.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pool5 map"):  # evaluation keeps the network's own input size
        model.eval()(x)
    with pytest.raises(UsageError, match="shrink_size=40"):
        _config("data.shrink_size=40", "data.shrink_epochs=2")
    with pytest.raises(UsageError, match="no pool5 map"):
        build_config(read_recipe("paper"), ["data.shrink_size=32", "data.shrink_epochs=2"])


def test_the_network_is_evaluated_through_its_last_epochs_windows():
    from alexnet.data.pipeline import pipeline_for

    config = _config("data.shrink_size=16", "data.shrink_epochs=10")  # the recipe: 28x28 windows to the end
    tested = pipeline_for(config, None).as_tested(config.data, config.optim.epochs)
    assert (tested.size, tested.padding, tested.shrink, tested.stored) == (28, 0, 0, 32)
    padded = _config("data.low_res_epochs=0")  # padded 32x32 crops, as the ablation arms train
    plain = pipeline_for(padded, None).as_tested(padded.data, padded.optim.epochs)
    assert (plain.size, plain.padding) == (32, 4)
    with pytest.raises(UsageError, match="eval_crops=4"):
        build_config(read_recipe("imagenet"), ["train.eval_crops=4"])


def test_a_frozen_conv1_keeps_its_weights_and_the_rest_learn():
    config = _config("optim.freeze_after=[1]")
    assert frozen(config, 0) == () and frozen(config, 1) == frozen(config, 5) == ("conv1",)
    model = AlexNet(config.model)
    step = TrainStep.build(model, model, config)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    step(x, y)  # momentum buffers for every layer, as after a learning epoch
    assert set_frozen(model, frozen(config, 1)) and not set_frozen(model, frozen(config, 2))
    conv1, conv2 = model.conv1.weight.detach().clone(), model.conv2.weight.detach().clone()
    for _ in range(3):
        step(x, y)
    assert torch.equal(conv1, model.conv1.weight) and model.conv1.weight.grad is None
    assert not torch.equal(conv2, model.conv2.weight)
    assert set_frozen(model, ()) and model.conv1.weight.requires_grad


@pytest.mark.slow
def test_a_run_with_both_phases_resumes_to_the_same_weights(tmp_path, data_cache):
    from alexnet.cli import main
    from fixtures import tiny_training

    common = tiny_training("data.low_res_size=28", "data.low_res_epochs=2", "data.shrink_size=16",
                           "data.shrink_epochs=1", "optim.freeze_after=[1]", "train.eval_every=3",
                           # no dependence on optim.epochs
                           "optim.schedule=\"step\"", "optim.step_epochs=30", "optim.warmup_epochs=0",
                           batch=32, epochs=3)
    assert main(["train", "--out", str(tmp_path / "whole"), *common]) == 0
    assert main(["train", "--out", str(tmp_path / "cut"), *common, "optim.epochs=1"]) == 0
    after_one = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "optim.epochs=3"]) == 0
    whole = torch.load(tmp_path / "whole/checkpoints/last.pt", weights_only=True)["model"]
    cut = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], cut[k]) for k in whole)  # the phases follow the epoch, not the process
    assert torch.equal(cut["conv1.weight"], after_one["conv1.weight"])  # frozen after epoch 1
    assert not torch.equal(cut["conv2.weight"], after_one["conv2.weight"])
