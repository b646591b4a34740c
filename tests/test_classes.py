"""The class count follows the data: a 7-class ImageFolder of real photos, as a user brings one.

The photos are real ILSVRC-2012 JPEGs of many sizes (some grayscale) from the shared samples,
grouped into seven folders, plus a CMYK JPEG, a PNG named .JPEG and a corrupt file made here.
The paper recipe is run as a user would: no model.num_classes, the ImageFolder itself as --data
(prepared into the cache on the way), then --crops 10 evaluation from the checkpoint alone.
"""

import io
import json
import shutil

import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.runs.checkpoint import load_checkpoint
from fixtures import SAMPLES, last_json

pytestmark = pytest.mark.xdist_group("photo_folder_runs")  # its module fixtures (a training run) built once
CLASSES = ("apple", "bicycle", "castle", "dolphin", "eagle", "forest", "guitar")
TRAIN, VAL = 19, 3  # 133 training images: one full batch of 128, as the paper recipe takes


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    samples = sorted(SAMPLES.glob("*.JPEG"))
    if len(samples) < len(CLASSES) * (TRAIN + VAL):
        pytest.fail(f"expected the shared ImageNet samples in {SAMPLES}")
    root = tmp_path_factory.mktemp("photos") / "my_photos"
    for i, sample in enumerate(samples[:len(CLASSES) * (TRAIN + VAL)]):
        split = "train" if i < len(CLASSES) * TRAIN else "val"  # the held-out split, as many users call it
        target = root / split / CLASSES[i % len(CLASSES)] / sample.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample, target)
    odd = root / "train" / CLASSES[0]
    with Image.open(samples[0]) as photo:
        photo.convert("CMYK").save(odd / "cmyk.jpg", quality=85)
        buffer = io.BytesIO()
        photo.save(buffer, format="PNG")
    (odd / "png_named.JPEG").write_bytes(buffer.getvalue())
    (odd / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return root


@pytest.fixture(scope="module")
def paper_run(folder, tmp_path_factory, data_cache):
    out = tmp_path_factory.mktemp("runs") / "paper"
    assert main(["train", "--recipe", "paper", "--data", str(folder), "--out", str(out), "optim.epochs=1",
                 "train.progress=false"]) == 0
    return out


@pytest.mark.slow
def test_paper_recipe_builds_fc8_for_the_folders_classes(paper_run):
    ckpt = load_checkpoint(paper_run / "checkpoints" / "last.pt")
    assert ckpt["model"]["fc8.weight"].shape == (7, 4096) and ckpt["config"]["model"]["num_classes"] == 7
    assert ckpt["classes"] == [{"index": i, "wnid": c, "name": c} for i, c in enumerate(CLASSES)]
    assert "num_classes = 7" in (paper_run / "config.toml").read_text()
    assert ckpt["pipeline"]["kind"] == "imagenet" and ckpt["pipeline"]["mean"].shape == (3, 256, 256)
    summary = json.loads((paper_run / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["examples"] == 7 * VAL


@pytest.mark.slow
def test_ten_crop_eval_from_the_checkpoint(paper_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(paper_run / "checkpoints" / "last.pt"), "--crops", "10"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["crops"] == 10 and result["examples"] == 7 * VAL
    assert 0 <= result["val_top5_err"] <= result["val_top1_err"] <= 1
    assert main(["eval", "--checkpoint", str(paper_run / "checkpoints" / "last.pt"), "--crops", "4"]) == 2
    assert "--crops 4" in capsys.readouterr().err


@pytest.mark.slow
def test_the_bad_files_were_skipped_and_the_odd_ones_kept(paper_run, folder, data_cache):
    prepared = next((data_cache / "prepared").glob("my_photos-*"))
    report = json.loads((prepared / "report.json").read_text())
    assert [s["source"].rsplit("/", 1)[-1] for s in report["skipped"]] == ["corrupt.jpg"]
    assert report["counts"]["train"]["images"] == 7 * TRAIN + 2  # the CMYK JPEG and the PNG named .JPEG


def test_a_num_classes_that_disagrees_exits_2_before_any_checkpoint(folder, tmp_path, capsys, data_cache):
    out = tmp_path / "five"
    assert main(["train", "--recipe", "paper", "--data", str(folder), "--out", str(out), "model.num_classes=5",
                 "train.progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.num_classes=5" in err[-1] and "7 classes" in err[-1]
    assert not (out / "checkpoints").exists() and not (out / "config.toml").exists()


def other_classes(root):
    """A 7-class ImageFolder of one flat image per class: the same count, another first class."""
    for split in ("train", "val"):
        for c, name in enumerate(("zebra", *CLASSES[1:])):
            (root / split / name).mkdir(parents=True)
            image = torch.full((3, 40, 50), 30 * c, dtype=torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(image).save(root / split / name / "a.png")
    return root


@pytest.mark.slow
def test_eval_refuses_data_with_other_classes(paper_run, tmp_path, capsys, data_cache):
    other = other_classes(tmp_path / "other")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(paper_run / "checkpoints" / "last.pt"), "--data", str(other)]) == 2
    assert "'apple' there and 'bicycle' here" in capsys.readouterr().err


@pytest.mark.slow
def test_an_ensemble_member_trained_on_other_inputs_is_refused(paper_run, tmp_path, capsys):
    last = paper_run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["pipeline"]["mean"] = ckpt["pipeline"]["mean"] + 1  # another training set's mean image
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(last), "--ensemble", str(last)]) == 0
    assert last_json(capsys.readouterr().out)["models"] == 2
    assert main(["eval", "--checkpoint", str(last), "--ensemble", str(other)]) == 2
    assert f"checkpoint {other} was trained on other inputs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_class_list_shorter_than_the_data_is_refused_in_one_line(paper_run):
    from alexnet.errors import UsageError
    from alexnet.runs.load import load_run

    loaded = load_run(paper_run / "checkpoints" / "last.pt")
    loaded.classes = loaded.classes[:6]

    class Data:
        classes = list(CLASSES)

    with pytest.raises(UsageError, match="class 6 is missing there and 'guitar' here"):
        loaded.check_classes(Data())


@pytest.mark.slow
def test_resume_refuses_data_with_other_classes(paper_run, tmp_path, capsys, data_cache):
    run = tmp_path / "run"
    shutil.copytree(paper_run, run)
    other = other_classes(tmp_path / "other")
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--data", str(other), "optim.epochs=2",
                 "data.batch_size=4"]) == 2
    assert "'apple' there and 'bicycle' here" in capsys.readouterr().err
