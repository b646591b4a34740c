"""Progressive resizing and frozen first layers (phases.py): decided by the epoch alone."""

import json
from types import SimpleNamespace

import pytest
import torch

from alexnet import AlexNet
from alexnet.config import build_config, read_recipe
from alexnet.errors import UsageError
from alexnet.model import ModelConfig, pool5_side
from alexnet.phases import check, frozen, set_frozen, train_pipeline
from alexnet.resume import Progress
from alexnet.runtime import Dist
from alexnet.train import make_optimizer, train_step


def _config(*overrides):
    return build_config(read_recipe("cifar10"), ["model.width=0.25", *overrides])


def test_pool5_side_matches_the_network():
    for config, sizes in [(ModelConfig(), (224, 227, 200)), (ModelConfig(variant="cifar", input_size=32), (32, 28, 25, 24)),
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
    check(_config("data.low_res_size=28", "data.low_res_epochs=2"))  # 28 -> 14 -> 7 -> 4, as 32
    with pytest.raises(UsageError, match=r"low_res_size=24 .* choose one of 25\.\.32"):
        check(_config("data.low_res_size=24", "data.low_res_epochs=2"))
    with pytest.raises(UsageError, match="freeze_after"):
        _config("optim.freeze_after=[3, 2]")


def test_the_low_res_pipeline_crops_small_windows_early_and_the_full_input_later():
    from alexnet.data.pipeline import pipeline_for

    config = _config("data.low_res_size=28", "data.low_res_epochs=2")
    full = pipeline_for(config, None)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    early, late = train_pipeline(full, config, 1), train_pipeline(full, config, 2)
    g = torch.Generator().manual_seed(0)
    assert early.train(images, g).shape == (4, 3, 28, 28) and early.padding == 0
    assert late is full and late.train(images, g).shape == (4, 3, 32, 32)


def test_a_frozen_conv1_keeps_its_weights_and_the_rest_learn():
    config = _config("optim.freeze_after=[1]")
    assert frozen(config, 0) == () and frozen(config, 1) == frozen(config, 5) == ("conv1",)
    model = AlexNet(config.model)
    run = SimpleNamespace(config=config, device=torch.device("cpu"), net=model, model=model,
                          optimizer=make_optimizer(model, config.optim), ddp=Dist(), progress=Progress(),
                          scaler=torch.amp.GradScaler("cpu", enabled=False))
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    train_step(run, x, y)  # momentum buffers for every layer, as after a learning epoch
    assert set_frozen(model, frozen(config, 1)) and not set_frozen(model, frozen(config, 2))
    conv1, conv2 = model.conv1.weight.detach().clone(), model.conv2.weight.detach().clone()
    for _ in range(3):
        train_step(run, x, y)
    assert torch.equal(conv1, model.conv1.weight) and model.conv1.weight.grad is None
    assert not torch.equal(conv2, model.conv2.weight)
    assert set_frozen(model, ()) and model.conv1.weight.requires_grad


@pytest.mark.slow
def test_a_run_with_both_phases_resumes_to_the_same_weights(tmp_path, data_cache):
    from alexnet.cli import main
    from fixtures import TARBALL

    common = ["data.limit=256", "data.batch_size=32", "model.width=0.25", "train.progress=false", "optim.epochs=3",
              "data.low_res_size=28", "data.low_res_epochs=2", "optim.freeze_after=[1]", "train.eval_every=3",
              "optim.schedule=\"step\"", "optim.step_epochs=30", "optim.warmup_epochs=0",  # no dependence on optim.epochs
              f"data.path={json.dumps(str(TARBALL))}"]
    assert main(["train", "--out", str(tmp_path / "whole"), *common]) == 0
    assert main(["train", "--out", str(tmp_path / "cut"), *common, "optim.epochs=1"]) == 0
    after_one = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "optim.epochs=3"]) == 0
    whole = torch.load(tmp_path / "whole/checkpoints/last.pt", weights_only=True)["model"]
    cut = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], cut[k]) for k in whole)  # the phases follow the epoch, not the process
    assert torch.equal(cut["conv1.weight"], after_one["conv1.weight"])  # frozen after epoch 1
    assert not torch.equal(cut["conv2.weight"], after_one["conv2.weight"])
