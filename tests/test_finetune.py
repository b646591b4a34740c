"""Fine-tuning (``alexnet train --init``) and the linear probe on cached features, on a small folder of
real photos with another class count than the init's."""

import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import torchvision

from alexnet import AlexNet, load_run, save_checkpoint
from alexnet.cli import main
from fixtures import (
    SAMPLES,
    caffe_blobs,
    json_lines,
    last_json,
    recipe_checkpoint,
    tiny_checkpoint,
    tiny_training,
    write_caffemodel,
)

# Three classes of the sample photos, by wnid range (their sizes and aspect ratios vary).
GROUPS = {"dogs": ("n02085", "n02114"), "birds": ("n01514", "n01600"), "fish": ("n01440", "n01500")}
FAST = tiny_training(limit=None, batch=4, eval_batch=8, width=None, data=None)  # the init's width, --data's photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An ImageFolder of real photos: 3 classes x (4 train, 2 val)."""
    root = tmp_path_factory.mktemp("photos")
    files = sorted(SAMPLES.glob("*.JPEG"))
    for name, (low, high) in GROUPS.items():
        chosen = [f for f in files if low <= f.name[:6] < high][:6]
        assert len(chosen) == 6, name
        for i, f in enumerate(chosen):
            folder = root / ("val" if i >= 4 else "train") / name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, folder / f.name)
    return root


@pytest.fixture
def ram_path(tmp_path):
    """/dev/shm where there is one: a full-size torchvision file is 244 MB."""
    if not Path("/dev/shm").is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="alexnet-test-") as folder:
        yield Path(folder)


def train(capsys, *args) -> dict:
    assert main(["train", *map(str, args)]) == 0, capsys.readouterr().err[-3000:]
    return last_json(capsys.readouterr().out)


def without_flip(state: dict) -> dict:
    """A pipeline's stored state less what training itself adds (mirror images)."""
    return {k: v for k, v in state.items() if k != "flip"}


def assert_same_input(a: dict, b: dict):
    a, b = without_flip(a), without_flip(b)
    assert a.keys() == b.keys()
    for key in a:
        same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
        assert same, key


@pytest.mark.slow
def test_torchvision_weights_file_fine_tunes_on_photos_keeping_its_input(photos, ram_path, tmp_path, capsys,
                                                                        data_cache):
    torch.manual_seed(0)
    pth = ram_path / "alexnet-owt.pth"
    torch.save(torchvision.models.alexnet().state_dict(), pth)  # torchvision's own file format
    out = tmp_path / "run"
    summary = train(capsys, "--init", pth, "--data", photos, "--out", out, *FAST)
    run = load_run(out / "checkpoints" / "last.pt")
    assert run.config.model.variant == "torchvision" and run.model.fc8.out_features == 3
    assert [c["wnid"] for c in run.classes] == sorted(GROUPS)
    tv = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255  # torchvision's normalisation, not the data's
    assert torch.allclose(run.pipeline.mean, tv) and run.pipeline.mean_kind == "channel"
    assert (run.pipeline.size, run.pipeline.stored, run.pipeline.resize) == (224, 256, "center")
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    assert summary["init"] == {"path": str(pth), "sha256": digest} and run.config.init.sha256 == digest
    assert main(["predict", "--checkpoint", str(out / "checkpoints" / "last.pt"), str(photos / "val"), "--json"]) == 0
    records = json_lines(capsys.readouterr().out)
    assert len(records) == 6 and {t["name"] for r in records for t in r["top"]} == set(GROUPS)


@pytest.fixture
def caffe_checkpoint(tmp_path, capsys):
    """BVLC Caffe's net (the paper's two towers at width 0.125, Caffe's 227 input, LRN k=1) imported."""
    model = write_caffemodel(tmp_path / "net.caffemodel", caffe_blobs())
    assert main(["import", "caffe", str(model), "--out", str(tmp_path / "caffe.pt")]) == 0
    capsys.readouterr()
    return tmp_path / "caffe.pt"


@pytest.mark.slow
def test_caffe_import_fine_tunes_and_probes_keeping_its_network_and_input(photos, caffe_checkpoint, tmp_path, capsys,
                                                                          data_cache):
    init = load_run(caffe_checkpoint)
    for recipe in ("finetune", "probe"):
        out = tmp_path / recipe
        train(capsys, "--init", caffe_checkpoint, "--data", photos, "--out", out, "--recipe", recipe, *FAST)
        run = load_run(out / "checkpoints" / "last.pt")
        kept = {k: getattr(run.config.model, k) for k in ("conv1_padding", "input_size", "lrn_k", "width", "towers")}
        assert kept == {"conv1_padding": 0, "input_size": 227, "lrn_k": 1.0, "width": 0.125, "towers": True}
        assert run.model.fc8.out_features == 3 and init.model.fc8.out_features == 10
        assert_same_input(run.checkpoint["pipeline"], init.checkpoint["pipeline"])  # squash, 227, Caffe's mean
        assert run.pipeline.resize == "squash" and run.config.data.resize == "squash"  # the photos squashed too
        before = init.model.state_dict()
        moved = {name for name, w in run.model.state_dict().items() if not torch.equal(w, before[name])}
        if recipe == "probe":  # fc8 alone learns; the rest is the init's to the bit
            assert moved == {"fc8.weight", "fc8.bias"}
        else:
            assert {"conv1.weight", "fc7.weight"} <= moved
    assert (tmp_path / "probe" / "features.safetensors").is_file()
    again = train(capsys, "--init", tmp_path / "probe" / "checkpoints" / "last.pt", "--data", photos, "--out",
                  tmp_path / "again", *FAST)  # a fine-tuned checkpoint is an init too: same classes, fc8 kept
    assert again["classes"] == 3


def test_a_wrong_shaped_init_and_init_with_resume_are_refused_before_anything_is_written(tmp_path, capsys):
    init = tiny_checkpoint(tmp_path / "tiny.pt")  # the paper's net at width 0.25, 5x5 conv2
    out = tmp_path / "run"
    assert main(["train", "--init", str(init), "--data", str(tmp_path), "--out", str(out), "model.conv2_kernel=3"]) == 2
    err = capsys.readouterr().err
    assert "conv2.weight is 64x12x5x5 in the init but 64x12x3x3 in the network to train" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["train", "--init", str(init), "--out", str(out), "--resume"]) == 2
    assert "--init starts a new run" in capsys.readouterr().err and not out.exists()
    assert main(["train", "--init", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    assert "none.pt" in capsys.readouterr().err and not out.exists()


def test_trainable_and_cached_features_are_checked_with_the_config():
    from alexnet.config import build_config, read_recipe, trainable_layers
    from alexnet.errors import UsageError

    assert trainable_layers("fc6+") == ("fc6", "fc7", "fc8") and trainable_layers("conv5") == ("conv5",)
    assert trainable_layers("all")[0] == "conv1"
    with pytest.raises(UsageError, match="optim.trainable must be all, a layer"):
        build_config(read_recipe("finetune"), ["optim.trainable=fc9"])
    with pytest.raises(UsageError, match="cached_features .* must start at fc6, fc7 or fc8"):
        build_config(read_recipe("probe"), ["optim.trainable=conv4+"])


def test_one_probe_step_on_cached_features_equals_one_step_through_the_frozen_network(tmp_path):
    """The probe trains fc8 on fc7 rows computed once; a step on them changes fc8 exactly as a step of the
    whole network (everything but fc8 frozen) on the same un-augmented batch: the centre and its mirror."""
    from alexnet.config import build_config, read_recipe, to_dict
    from alexnet.train import curriculum
    from alexnet.train.probe import Head, compute
    from alexnet.train.step import TrainStep

    config = build_config(read_recipe("probe"), ["model.num_classes=3", "model.width=0.25", "model.init=\"kaiming\""])
    torch.manual_seed(0)
    model = AlexNet(config.model)
    loaded = load_run(save_checkpoint(tmp_path / "m.pt", model, to_dict(config), pipeline=tiny_pipeline_state()))
    images, labels = torch.randint(0, 256, (6, 3, 256, 256), dtype=torch.uint8), torch.tensor([0, 1, 2, 2, 1, 0])
    rows, twice = compute(loaded.model, loaded.pipeline, images, labels, "fc7", torch.device("cpu"), "fp32", 4)
    assert rows.shape == (12, model.fc7.out_features) and torch.equal(twice, labels.repeat_interleave(2))

    def stepped(net_of, x):
        net = AlexNet(config.model)
        net.load_state_dict(loaded.model.state_dict())
        curriculum.set_frozen(net.train(), curriculum.frozen(config, 0))
        TrainStep.build(net, net_of(net), config)(x, twice)
        return net

    cached = stepped(lambda net: Head(net, "fc8"), rows)
    whole = stepped(lambda net: net, loaded.pipeline.eval_inputs(images, 2)[0])
    assert not torch.equal(cached.fc8.weight, loaded.model.fc8.weight)
    torch.testing.assert_close(cached.fc8.weight, whole.fc8.weight, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached.fc8.bias, whole.fc8.bias, atol=1e-4, rtol=0)
    assert torch.equal(cached.fc7.weight, loaded.model.fc7.weight) and torch.equal(whole.conv1.weight,
                                                                                    loaded.model.conv1.weight)


def tiny_pipeline_state() -> dict:
    from alexnet.data.pipeline import Pipeline

    return Pipeline(kind="imagenet", size=224, stored=256, mean=torch.full((3, 256, 256), 115.0), mean_kind="image",
                    std=torch.full((3, 1, 1), 60.0)).state_dict()


def fine_tune(init_path, overrides, data="photos"):
    from alexnet.config import read_recipe
    from alexnet.train.finetune import check_fits, fine_tune_config
    from alexnet.use.pretrained import load_init

    init = load_init(init_path)
    config = fine_tune_config(init, read_recipe("finetune"), overrides, data)
    check_fits(init, config)
    return config


def test_the_init_is_checked_on_one_device_and_against_its_own_input(tmp_path):
    """The tower split is checked as one network; validation views are checked against the init's input
    (an ImageNet-style network cannot take 4 views whatever data.dataset says, a CIFAR-10 one can); an
    init without a stored input is refused in check_fits, before anything is written."""
    from alexnet.config import build_config, read_recipe
    from alexnet.errors import UsageError

    init = tiny_checkpoint(tmp_path / "tiny.pt")
    assert fine_tune(init, ["model.tower_devices=cpu,cpu"]).model.tower_devices == "cpu,cpu"
    with pytest.raises(UsageError, match="train.eval_crops=4: .* keeps its init's imagenet input"):
        fine_tune(init, ["data.dataset=cifar10", "train.eval_crops=4"])
    cifar_init = recipe_checkpoint(tmp_path / "cifar.pt", "cifar10", ["model.width=0.125"],
                                   pipeline=cifar_pipeline_state())
    assert fine_tune(cifar_init, ["train.eval_crops=4"]).train.eval_crops == 4
    bare = recipe_checkpoint(tmp_path / "bare.pt", "imagenet", ["model.num_classes=3", "model.width=0.25"])  # no mean
    with pytest.raises(UsageError, match="stores no input pipeline"):
        fine_tune(bare, [])
    with pytest.raises(UsageError, match="cached_features runs the frozen network once on one device"):
        build_config(read_recipe("probe"), ["model.tower_devices=cpu,cpu"])


def cifar_pipeline_state() -> dict:
    from alexnet.data.pipeline import CIFAR10_MEAN, CIFAR10_STD, Pipeline

    return Pipeline(kind="cifar10", size=28, stored=32, mean=torch.tensor(CIFAR10_MEAN).view(3, 1, 1),
                    mean_kind="channel", std=torch.tensor(CIFAR10_STD).view(3, 1, 1)).state_dict()


def test_a_folder_named_like_a_recipe_is_not_read_as_one(tmp_path, monkeypatch):
    from alexnet.config import read_recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "finetune").mkdir()
    assert read_recipe("finetune")["optim"]["trainable"] == "all"


def test_a_new_run_drops_features_and_metrics_left_by_a_run_that_wrote_no_checkpoint(tmp_path):
    from alexnet.runs.folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.features.write_bytes(b"rows of other photos")
    folder.metrics_file.write_text('{"epoch": 1}\n')
    folder.start("recipe = 'probe'\n", resume=False)
    assert not folder.features.exists() and not folder.metrics_file.exists() and folder.config.is_file()


def test_a_probe_without_mirrors_caches_one_row_per_image(tmp_path):
    from alexnet.train.probe import compute

    loaded = load_run(tiny_checkpoint(tmp_path / "tiny.pt"))
    images, labels = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8), torch.tensor([0, 1, 2])
    rows, rows_labels = compute(loaded.model, loaded.pipeline, images, labels, "fc7", torch.device("cpu"), "fp32",
                                4, count=1)
    assert rows.shape[0] == 3 and torch.equal(rows_labels, labels)
