"""`alexnet figures` from tiny untrained checkpoints: generated image folders, a tiny CIFAR-10
tree and a tiny prepared ImageNet folder (the real CIFAR-10 would take longer to load than the
figures take to draw)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.cifar.load import CLASSES
from alexnet.paper.figures import default_out, nearest_neighbours, true_class
from fixtures import exif_rotated_jpeg, last_json, recipe_checkpoint


def make_checkpoint(run_dir, recipe="cifar10", overrides=()):
    """A run folder with an untrained checkpoint of the recipe's network (random but fixed weights)."""
    return recipe_checkpoint(run_dir / "checkpoints" / "last.pt", recipe, overrides)


def picture(seed: int, height: int = 40, width: int = 48) -> np.ndarray:
    """A distinct image: a random colour gradient with a random bright rectangle."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(0, 255, 3) + rng.uniform(0, 80, 3)
    image = np.broadcast_to(ramp, (height, width, 3)).copy()
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[top:top + height // 3, left:left + width // 3] = rng.uniform(0, 255, 3)
    return image.clip(0, 255).astype(np.uint8)


def save(array: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


QUERY_FILES = ("airplane_1.png", "cat.png", "dog/3.png", "frog-2.jpg", "horse_7.png", "unknown.png")


def copy_name(i: int) -> str:
    return f"copy_{i}{Path(QUERY_FILES[i]).suffix}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """images/: six named pictures; gallery/: an exact copy and a near copy (+-2 levels) of each, and
    twelve other pictures, so each query's nearest neighbours are known."""
    root = tmp_path_factory.mktemp("figures")
    (root / "gallery").mkdir()
    rng = np.random.default_rng(1)
    for i, name in enumerate(QUERY_FILES):
        image = picture(i, 40 + 4 * i, 48)
        save(image, root / "images" / name)
        shutil.copyfile(root / "images" / name, root / "gallery" / copy_name(i))
        near = (image.astype(int) + rng.integers(-2, 3, image.shape)).clip(0, 255).astype(np.uint8)
        save(near, root / "gallery" / f"near_{i}.png")
    for i in range(12):
        save(picture(100 + i), root / "gallery" / f"other_{i:02d}.png")
    return root


def assert_picture(path, min_width: int, min_height: int) -> None:
    """A real picture: big enough and far from one colour."""
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= min_height
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50 and pixels.std() > 20


def run_figures(capsys, *argv) -> dict:
    assert main(["figures", *map(str, argv)]) == 0
    return last_json(capsys.readouterr().out)


@pytest.mark.slow
def test_folders_give_three_pictures_and_known_neighbours(folders, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run", overrides=["model.width=0.25"])
    printed = run_figures(capsys, "--checkpoint", ckpt, "--images", folders / "images",
                          "--gallery", folders / "gallery", "--units", "conv1,conv5")
    assert printed["figure3"] == str(tmp_path / "run" / "figures" / "figure3.png")  # default: RUN_DIR/figures
    assert_picture(printed["figure3"], 300, 100)
    assert_picture(printed["figure4_top5"], 800, 600)
    assert_picture(printed["figure4_neighbours"], 700, 600)
    assert_picture(printed["figure4_gradcam"], 500, 400)
    assert_picture(printed["figure_units"], 500, 300)
    blob = json.loads((tmp_path / "run" / "figures" / "figures.json").read_text())
    assert list(blob["units"]) == ["conv1", "conv5"]
    for unit in (u for units in blob["units"].values() for u in units):  # 9 distinct images, strongest first
        assert len(set(unit["images"])) == 9 and unit["activations"] == sorted(unit["activations"], reverse=True)
    assert all(len(units) == 6 for units in blob["units"].values())
    assert [r["true"] for r in blob["top5"]] == ["airplane", "cat", "dog", "frog", "horse", None]
    for record in blob["top5"]:
        probs = [t["probability"] for t in record["top5"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
    assert len(blob["neighbours"]) == 5  # the paper's five queries, six neighbours each
    for i, record in enumerate(blob["neighbours"]):
        found = [nb["path"] for nb in record["neighbours"]]
        assert len(found) == 6 and found[:2] == [str(folders / "gallery" / n) for n in (copy_name(i), f"near_{i}.png")]
        distances = [nb["distance"] for nb in record["neighbours"]]
        assert distances == sorted(distances) and distances[0] < 1e-3 * distances[2]


@pytest.mark.slow
def test_a_query_is_not_its_own_neighbour_but_its_copy_is(folders, tmp_path, capsys):
    both = tmp_path / "both"
    shutil.copytree(folders / "images", both)
    for i, name in enumerate(QUERY_FILES[:5]):  # sorted after the queries: zz_
        shutil.copyfile(both / name, both / f"zz_copy_{i}.png")
    ckpt = make_checkpoint(tmp_path / "run", overrides=["model.width=0.25"])
    run_figures(capsys, "--checkpoint", ckpt, "--images", both, "--gallery", both, "--out", tmp_path / "out")
    blob = json.loads((tmp_path / "out" / "figures.json").read_text())
    for i, record in enumerate(blob["neighbours"]):
        paths = [nb["path"] for nb in record["neighbours"]]
        assert record["path"] not in paths and paths[0] == str(both / f"zz_copy_{i}.png")
        assert record["neighbours"][0]["distance"] < 1e-3 * record["neighbours"][1]["distance"]


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory):
    """A CIFAR-10 ImageFolder tree: three training and one test picture per class."""
    root = tmp_path_factory.mktemp("cifar") / "tree"
    for c, name in enumerate(CLASSES):
        for i in range(3):
            save(picture(10 * c + i, 32, 32), root / "train" / name / f"{i}.png")
        save(picture(1000 + c, 32, 32), root / "test" / name / "0.png")
    return root


@pytest.mark.slow
def test_default_images_come_from_the_checkpoints_dataset(cifar_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "cache"))
    ckpt = make_checkpoint(tmp_path / "run", overrides=["model.width=0.25", f"data.path={json.dumps(str(cifar_tree))}",
                                                        "model.towers=false"])
    run_figures(capsys, "--checkpoint", ckpt, "--gallery-limit", "20")
    blob = json.loads((tmp_path / "run" / "figures" / "figures.json").read_text())
    assert [r["image"] for r in blob["top5"]] == [f"val[{i}]" for i in range(8)]
    assert all(r["true"] in CLASSES for r in blob["top5"])
    found = [nb for r in blob["neighbours"] for nb in r["neighbours"]]
    assert len(found) == 5 * 6 and all(nb["image"].startswith("train[") and nb["class"] in CLASSES for nb in found)
    assert_picture(tmp_path / "run" / "figures" / "figure3.png", 300, 60)  # one tower: one block


@pytest.mark.slow
def test_prepared_imagenet_uses_the_mean_image_and_class_names(tmp_path, capsys):
    src, wnids = tmp_path / "src", ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark
    for split, count in (("train", 3), ("val", 2)):
        for c, wnid in enumerate(wnids):
            for i in range(count):
                save(picture(10 * c + i + 100 * (split == "val"), 60, 80), src / split / wnid / f"{wnid}_{i}.png")
    prepared = tmp_path / "prepared"
    assert main(["prepare", "imagenet", "--src", str(src), "--out", str(prepared), "--workers", "1"]) == 0
    capsys.readouterr()
    ckpt = make_checkpoint(tmp_path / "run", "paper", ["model.num_classes=3", "model.width=0.125",
                                                       f"data.path={json.dumps(str(prepared))}"])
    printed = run_figures(capsys, "--checkpoint", ckpt)
    blob = json.loads((tmp_path / "run" / "figures" / "figures.json").read_text())
    assert len(blob["top5"]) == 6 and {r["true"] for r in blob["top5"]} == {"tench", "goldfish", "great white shark"}
    assert all(len(r["top5"]) == 3 for r in blob["top5"])  # three classes: a top-3
    assert all(len(r["neighbours"]) == 6 for r in blob["neighbours"])
    assert_picture(printed["figure3"], 300, 100)


def test_nearest_neighbours_are_exact():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(1, 64, generator=generator) * 1e4  # large, nearly equal vectors: |a|^2 - 2ab + |b|^2 fails
    gallery = base + torch.randn(40, 64, generator=generator, dtype=torch.float64) * 1e-3
    queries = gallery[[7, 31]] + 1e-5
    index, dist = nearest_neighbours(queries, gallery, k=6)
    expected = np.linalg.norm(gallery.numpy()[None] - queries.numpy()[:, None], axis=2)
    assert index.tolist() == np.argsort(expected, axis=1, kind="stable")[:, :6].tolist()
    assert index[:, 0].tolist() == [7, 31]
    np.testing.assert_allclose(dist.numpy(), np.take_along_axis(expected, index.numpy(), 1), rtol=1e-12)


def test_nearest_neighbours_ties_exclusion_and_small_galleries():
    gallery = torch.tensor([[0.0, 0], [3, 0], [1, 0], [1, 0], [5, 0]])
    index, dist = nearest_neighbours(torch.tensor([[1.0, 0]]), gallery, k=3)
    assert index.tolist() == [[2, 3, 0]] and dist.tolist() == [[0.0, 0.0, 1.0]]  # ties: lower index first
    exclude = torch.tensor([[False, False, True, False, False]])
    assert nearest_neighbours(torch.tensor([[1.0, 0]]), gallery, k=2, exclude=exclude)[0].tolist() == [[3, 0]]
    index, _ = nearest_neighbours(torch.tensor([[4.0, 0]]), gallery, k=6, exclude=exclude)
    assert index.tolist() == [[1, 4, 3, 0]]  # only four left


def test_true_class_from_folder_or_file_name(tmp_path):
    cifar = [(c,) for c in CLASSES]
    assert true_class(tmp_path / "cat" / "1.png", cifar) == 3
    assert true_class(tmp_path / "cat_12.png", cifar) == 3
    assert true_class(tmp_path / "Cat.JPG", cifar) == 3
    assert true_class(tmp_path / "catamaran.png", cifar) is None
    assert true_class(tmp_path / "photo.png", cifar) is None
    imagenet = [("tiger", "n1"), ("tiger shark", "n01491361")]
    assert true_class(tmp_path / "tiger_shark_1.png", imagenet) == 1  # the longest name wins
    assert true_class(tmp_path / "n01491361_x.JPEG", imagenet) == 1
    assert true_class(tmp_path / "n1" / "a.JPEG", imagenet) == 0


def test_default_out_is_the_run_folder(tmp_path):
    assert default_out(tmp_path / "run" / "checkpoints" / "best.pt") == tmp_path / "run" / "figures"
    assert default_out(tmp_path / "model.pt") == tmp_path / "figures"


def test_bad_input_exits_2_with_a_message(folders, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run", overrides=["model.width=0.25"])
    (tmp_path / "empty").mkdir()
    save(picture(0), tmp_path / "alone" / "a.png")
    alone, gallery = tmp_path / "alone", folders / "gallery"
    cases = [(["--checkpoint", tmp_path / "none.pt"], "none.pt"),
             (["--images", tmp_path / "empty", "--gallery", gallery], "no image files"),
             (["--images", tmp_path / "missing"], "not a folder"),
             (["--gallery-limit", "0"], "--gallery-limit"),
             (["--units", "conv1,fc7"], "fc7 is not a conv layer"),
             (["--images", alone, "--gallery", alone], "only the query")]
    for argv, message in cases:
        assert main(["figures", "--checkpoint", str(ckpt), *map(str, argv)]) == 2
        assert message in capsys.readouterr().err


def test_default_queries_take_one_image_per_class_first():
    from alexnet.paper.figures import one_per_class

    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # stored class by class, as CIFAR-10's test tarball
    assert one_per_class(labels, 3).tolist() == [0, 3, 5]
    assert one_per_class(labels, 5).tolist() == [0, 3, 5, 1, 2]
    assert one_per_class(labels, 2).tolist() == [0, 3]


def test_folder_images_stand_upright_as_predict_reads_them(tmp_path):
    """A phone's portrait shot is stored landscape with an EXIF orientation: figures applies it."""
    from types import SimpleNamespace

    from alexnet.paper.figures import FolderImages

    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, :30, 0] = 255  # stored left half red, right half blue
    pixels[:, 30:, 2] = 255
    (tmp_path / "portrait.jpg").write_bytes(exif_rotated_jpeg(pixels, quality=95))  # shown: the left half on top
    image = FolderImages([tmp_path / "portrait.jpg"], SimpleNamespace(stored=30, resize="center"))[0][0]
    assert image.shape == (3, 30, 30)
    top, bottom = image[:, 3, 15].int(), image[:, 26, 15].int()
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # red above blue


@pytest.mark.parametrize("variant", ["paper", "torchvision", "cifar"])
def test_receptive_fields_are_where_a_unit_takes_its_input_from(variant):
    """The gradient of one unit's activation reaches exactly its receptive field, with every ReLU open and the
    max pools made average pools of the same geometry (a max pool's gradient takes one input of each window)."""
    import torch

    from alexnet import AlexNet, ModelConfig
    from alexnet.nn.fields import CONVS, receptive_fields

    side = 32 if variant == "cifar" else 224
    model = AlexNet(ModelConfig(variant=variant, input_size=side, num_classes=3, width=0.125, lrn=False)).eval()
    fields = receptive_fields(model)
    pool = model.pool
    model.pool = torch.nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding)
    with torch.no_grad():
        for layer in model.layers():
            layer.weight.fill_(1e-3)
            layer.bias.fill_(0.1)
    for name in CONVS:
        x = torch.ones(1, 3, side, side, requires_grad=True)
        out = model.features(x, name)
        h = out.shape[-1]
        for y, xx in ((0, 0), (h // 2, h // 3), (h - 1, h - 1)):
            grad, = torch.autograd.grad(out[0, 0, y, xx], x, retain_graph=True)
            rows, cols = grad[0].abs().sum(0).nonzero(as_tuple=True)
            found = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
            assert found == fields[name].box(y, xx, side), (name, y, xx)
