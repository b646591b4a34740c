"""The paper's recipe end to end on a tiny prepared ImageFolder: prepare, train one epoch, 10-crop eval."""

import json

import pytest
import torch
from torchvision.io import write_png

from alexnet.cli import main
from alexnet.data.augment import crop_at, flip_where
from alexnet.data.datasets import ShardImages
from alexnet.data.pipeline import Pipeline
from alexnet.data.subset import balanced_indices
from fixtures import last_json, tiny_training

WNIDS = ("n00000001", "n00000002", "n00000003")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 6), ("val", 2)):
        for c, wnid in enumerate(WNIDS):
            (src / split / wnid).mkdir(parents=True)
            for i in range(count):
                image = torch.randint(0, 60, (3, 40, 50), generator=generator, dtype=torch.uint8)
                image[c] += 150  # the class is the dominant colour
                write_png(image, str(src / split / wnid / f"{wnid}_{i}.png"))
    out = tmp_path_factory.mktemp("prepared") / "set"
    assert main(["prepare", "imagenet", "--src", str(src), "--out", str(out), "--workers", "1"]) == 0
    return out


PAPER = ["--recipe", "paper", *tiny_training("model.num_classes=3", "data.workers=0", limit=None, batch=6, eval_batch=3,
                                             width=0.125, data=None)]


@pytest.mark.slow
def test_paper_recipe_trains_one_epoch_and_evaluates_ten_crops(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--out", str(out), *PAPER]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["examples"] == 6
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--crops", "10"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["crops"] == 10 and result["examples"] == 6
    assert 0 <= result["val_top5_err"] <= result["val_top1_err"] <= 1


def test_paper_pipeline_crops_the_mean_with_the_image(prepared):
    from alexnet.config import build_config, read_recipe

    config = build_config(read_recipe("paper"), ["data.pca_std=0", f"data.path={json.dumps(str(prepared))}"])
    from alexnet.data.datasets import load_dataset
    from alexnet.data.pipeline import pipeline_for

    pipeline = pipeline_for(config, load_dataset(config.data, 0))
    assert pipeline.kind == "imagenet" and pipeline.std is None and pipeline.lighting is None  # the paper's
    images = ShardImages(prepared / "train")[torch.arange(4)]
    mean = torch.rand(3, 256, 256) * 255
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, flip=True, mean=mean, mean_kind="image")
    x = pipeline.train(images, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the same random numbers
    from alexnet.data.augment import random_crop_offsets, random_flips

    dy, dx = random_crop_offsets(4, 256, 256, 224, g)
    flip = random_flips(4, g)
    expected = flip_where(crop_at(images, dy, dx, 224), flip).float() - flip_where(crop_at(mean, dy, dx, 224), flip)
    assert x.shape == (4, 3, 224, 224)
    torch.testing.assert_close(x, expected)


def test_limit_on_shards_is_class_balanced(prepared):
    train = ShardImages(prepared / "train")
    picked = balanced_indices(train.labels, 3, 6, seed=1)
    assert sorted(train.labels[picked].tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.equal(picked, balanced_indices(train.labels, 3, 6, seed=1))


def test_an_unfinished_folder_is_refused(prepared, tmp_path, capsys):
    import shutil

    half = tmp_path / "half"
    shutil.copytree(prepared, half)
    (half / "prepared.json").unlink()
    assert main(["train", "--data", str(half), "--out", str(tmp_path / "run"), *PAPER]) == 2
    assert "prepared.json" in capsys.readouterr().err


def test_limit_takes_a_balanced_subset_of_each_prepared_split(prepared):
    from alexnet.config import DataConfig
    from alexnet.data.datasets import load_prepared

    data = load_prepared(DataConfig(dataset="imagenet", path=str(prepared), limit=3), seed=0)
    assert sorted(data.train_labels.tolist()) == sorted(data.val_labels.tolist()) == [0, 1, 2]
    images = data.train_images[torch.arange(3)]
    assert images.shape == (3, 3, 256, 256)
    assert torch.equal(images[0], data.train_images.reader.read_many([int(data.train_images.indices[0])])[0])
    every = load_prepared(DataConfig(dataset="imagenet", path=str(prepared), limit=3, val_limit=0), seed=0)
    assert len(every.train_labels) == 3 and len(every.val_labels) == len(ShardImages(prepared / "val")) > 3


def test_device_decode_gives_the_cpu_decoders_batches(prepared):
    """data.decode=device (torchvision decode_jpeg, nvJPEG on a GPU) runs here on the CPU: same
    labels, and pixels within the rounding of two libjpeg-turbo builds."""
    from alexnet.data.datasets import batches

    images = ShardImages(prepared / "train")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    cpu = list(batches(images, images.labels, order, 6, torch.device("cpu")))
    dev = list(batches(images, images.labels, order, 6, torch.device("cpu"), decode="device", start=1))
    assert len(cpu) == 3 and len(dev) == 2  # start=1: the resumed epoch skips batch 0
    for (x, y), (xd, yd) in zip(cpu[1:], dev):
        assert torch.equal(y, yd) and xd.shape == x.shape and xd.dtype == torch.uint8
        assert (x.int() - xd.int()).abs().max() <= 2


def test_standardize_divides_by_the_training_sets_channel_std_after_the_mean_image(prepared):
    from safetensors.torch import load_file

    from alexnet.config import build_config, read_recipe
    from alexnet.data.augment import random_crop_offsets, random_flips
    from alexnet.data.datasets import load_dataset
    from alexnet.data.pipeline import pipeline_for

    config = build_config(read_recipe("imagenet"), [f"data.path={json.dumps(str(prepared))}", "data.pca_std=0"])
    pipeline = pipeline_for(config, load_dataset(config.data, 0))
    stats = load_file(str(prepared / "stats.safetensors"))
    std = stats["covariance"].diagonal().sqrt().view(3, 1, 1)
    torch.testing.assert_close(pipeline.std, std)
    images = ShardImages(prepared / "train")[torch.arange(4)]
    x = pipeline.train(images, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    dy, dx = random_crop_offsets(4, 256, 256, 224, g)
    flip = random_flips(4, g)
    mean = flip_where(crop_at(stats["mean_image"], dy, dx, 224), flip)
    torch.testing.assert_close(x, (flip_where(crop_at(images, dy, dx, 224), flip).float() - mean) / std)
    assert 0.2 < x.std() < 5  # unit scale, where the paper's input has a std of tens of levels


def test_a_test_folder_is_the_validation_split(tmp_path):
    src = tmp_path / "src"
    for split, count in (("train", 2), ("test", 1)):
        for name in ("cat", "dog"):
            (src / split / name).mkdir(parents=True)
            for i in range(count):
                write_png(torch.full((3, 30, 40), 90 * i, dtype=torch.uint8), str(src / split / name / f"{i}.png"))
    out = tmp_path / "out"
    assert main(["prepare", "imagenet", "--src", str(src), "--out", str(out), "--workers", "1"]) == 0
    assert json.loads((out / "prepared.json").read_text())["counts"] == {"train": 4, "val": 2}


def test_reading_shards_leaves_the_global_random_numbers_alone(prepared):
    """Dropout draws from the global generator: a loader over shards must not (a run resumed inside an
    epoch makes one loader more than the run it continues, and would drop other units)."""
    from alexnet.data.datasets import batches

    train = ShardImages(prepared / "train")
    torch.manual_seed(3)
    before = torch.get_rng_state()
    got = list(batches(train, train.labels, torch.arange(len(train.labels)), 6, torch.device("cpu"), workers=0))
    assert len(got) == 3 and torch.equal(torch.get_rng_state(), before)
