"""Heat maps (``alexnet explain``): a network trained here on images whose class is the colour of a patch
at a random, known place must look at the patch; its maps must depend on its weights; hiding what a map
ranks highest must cost the class more than hiding what it ranks lowest; and the command must map real
photos of any size and report a broken file."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import AlexNet, ModelConfig
from alexnet.cli import main
from alexnet.data.pipeline import Pipeline
from alexnet.use.explain import Explainer, on_photo, ranked_hiding
from fixtures import SAMPLES, exif_rotated_jpeg, json_lines, last_json, tiny_checkpoint

SIDE, PATCH, CLASSES = 32, 8, 3
PATCH_NET = pytest.mark.xdist_group("explain_patch_net")  # the tests of one trained network: one process


def patch_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 noise images with one PATCH x PATCH square of pure red, green or blue (the class) at a random
    place: the images, the labels and each square's top-left corner."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 120, (n, 3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    corners = torch.randint(0, SIDE - PATCH + 1, (n, 2), generator=g)
    for image, label, (y, x) in zip(images, labels, corners.tolist()):
        image[:, y:y + PATCH, x:x + PATCH] = 0
        image[label, y:y + PATCH, x:x + PATCH] = 255
    return images, labels, corners


PIPELINE = Pipeline(kind="cifar10", size=SIDE, stored=SIDE, mean=torch.full((3, 1, 1), 80.0), mean_kind="channel",
                    std=torch.full((3, 1, 1), 60.0))


@pytest.fixture(scope="module")
def trained():
    """The CIFAR-10 network at a quarter of its width, trained to tell the patch's colour (7-11 s). The tests
    that use it share one test process (``xdist_group``; ``make test`` runs ``--dist loadgroup``)."""
    torch.manual_seed(0)
    model = AlexNet(ModelConfig(variant="cifar", input_size=SIDE, num_classes=CLASSES, width=0.25, dropout=0.0,
                                init="kaiming"))
    train_on_patches(model)
    model.eval()
    test, test_labels, corners = patch_images(48, seed=2)
    with torch.no_grad():
        accuracy = (model(PIPELINE.eval_input(test)).argmax(1) == test_labels).float().mean()
    assert accuracy > 0.95, accuracy  # the maps below are of a network that learned the task
    return model, test, test_labels, corners


def train_on_patches(model) -> None:
    images, labels, _ = patch_images(768, seed=1)
    x = PIPELINE.eval_input(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(120):
        batch = torch.arange(step * 64, step * 64 + 64) % len(labels)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def explainer(model) -> Explainer:
    return Explainer(model, PIPELINE, torch.device("cpu"), window=PATCH, stride=2, batch_size=256)  # the patch's side


@pytest.fixture(scope="module")
def maps(trained) -> dict[str, torch.Tensor]:
    """Both methods' maps of the trained network's test images for their true classes (made once)."""
    model, images, labels, _ = trained
    return {method: explainer(model).maps(PIPELINE.eval_input(images), labels, method)
            for method in ("gradcam", "occlusion")}


@PATCH_NET
@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_the_map_is_largest_on_the_patch_that_decides_the_class(trained, maps, method):
    _, _, labels, corners = trained
    assert maps[method].shape == (len(labels), SIDE, SIDE) and maps[method].dtype == torch.float32
    inside = 0
    for m, (y, x) in zip(maps[method], corners.tolist()):
        top_y, top_x = divmod(int(m.argmax()), SIDE)
        inside += y <= top_y < y + PATCH and x <= top_x < x + PATCH
    assert inside >= 0.8 * len(labels), f"{inside} of {len(labels)} maps peak on the patch"  # 44-46 of 48 here


@PATCH_NET
def test_randomising_the_weights_changes_the_gradcam_map(trained, maps):
    """Adebayo et al. (2018)'s sanity check: a map that survives random weights explains the image, not
    the network."""
    model, images, labels, _ = trained
    x = PIPELINE.eval_input(images)
    before = maps["gradcam"]
    torch.manual_seed(5)
    random = AlexNet(model.config).eval()
    after = explainer(random).maps(x, labels, "gradcam")
    correlations = [np.corrcoef(a.flatten(), b.flatten())[0, 1] for a, b in zip(before, after)
                    if a.std() > 0 and b.std() > 0]
    assert np.nanmean(correlations) < 0.5, np.nanmean(correlations)


@PATCH_NET
@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_hiding_the_top_ranked_quarter_costs_more_than_hiding_the_lowest(trained, maps, method):
    model, images, labels, _ = trained
    e = explainer(model)
    x = PIPELINE.eval_input(images)

    def prob(inputs):
        return e.probabilities(inputs)[torch.arange(len(labels)), labels]

    full = prob(x)
    top = full - prob(ranked_hiding(x, maps[method], 0.25))
    low = full - prob(ranked_hiding(x, maps[method], 0.25, lowest=True))
    assert top.mean() > low.mean() + 0.3, (top.mean(), low.mean())


def test_a_window_map_lands_on_the_photo_where_the_network_saw_it():
    """The centre 224 of the stored 256 came from the photo's centre square (or the whole photo squashed)."""
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.full((3, 1, 1), 100.0), mean_kind="channel")
    heat = on_photo(torch.ones(224, 224), pipeline, 300, 500)
    assert heat.shape == (300, 500)
    cols = torch.nonzero(heat[150] > 0.5).flatten()
    rows = torch.nonzero(heat[:, 250] > 0.5).flatten()
    # the square is 300 wide at column 100; the window is 224/256 of it, centred: about 262 pixels
    assert abs(int(cols[0]) - 119) <= 2 and abs(int(cols[-1]) - 380) <= 2, (cols[0], cols[-1])
    assert abs(int(rows[0]) - 19) <= 2 and abs(int(rows[-1]) - 280) <= 2
    squashed = on_photo(torch.ones(224, 224), dataclasses.replace(pipeline, resize="squash"), 300, 500)
    assert squashed[150, 40] > 0.5 and squashed[150, 10] == 0  # the window's 16/256 margin of 500: 31 pixels


@pytest.mark.slow
def test_explain_maps_photos_of_every_size_at_their_own_size_and_reports_a_broken_file(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted(SAMPLES.glob("*.JPEG"))[:3]:
        shutil.copy(f, photos / f.name)
    pixels = np.zeros((40, 90, 3), np.uint8)
    (photos / "portrait.jpg").write_bytes(exif_rotated_jpeg(pixels))  # stored 90 wide, shown 40 wide and 90 high
    Image.fromarray(np.full((50, 70, 4), 200, np.uint8)).save(photos / "logo.png")
    (photos / "broken.jpg").write_bytes(sorted(SAMPLES.glob("*.JPEG"))[0].read_bytes()[:2000])
    out = tmp_path / "maps"
    code = main(["explain", "--checkpoint", str(ckpt), str(photos), "--out", str(out), "--json", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1 and "broken.jpg" in captured.err and "truncated" in captured.err
    records = {r["file"].rsplit("/", 1)[1]: r for r in json_lines(captured.out)}
    assert len(records) == 6 and "error" in records["broken.jpg"]
    for name, record in records.items():
        if name == "broken.jpg":
            continue
        with Image.open(photos / name) as image:
            from PIL import ImageOps

            width, height = ImageOps.exif_transpose(image).size
        heat = np.load(record["map"])
        assert heat.shape == (height, width) and heat.dtype == np.float32 and heat.min() >= 0
        assert record["class"]["name"] in ("cat", "dog", "fish") and 0 < record["class"]["prob"] <= 1
        with Image.open(record["overlay"]) as overlay:
            assert overlay.size == (width, height)
    assert np.load(records["portrait.jpg"]["map"]).shape == (90, 40)
    assert main(["explain", "--checkpoint", str(ckpt), str(photos / "logo.png"), "--out", str(out), "--method",
                 "occlusion", "--window", "56", "--stride", "56", "--class", "fish", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["class"]["index"] == 2 and np.load(record["map"]).shape == (50, 70)
    assert main(["explain", "--checkpoint", str(ckpt), str(photos / "logo.png"), "--class", "zebra"]) == 2
    assert "--class zebra" in capsys.readouterr().err


@pytest.mark.parametrize("variant,side", [("paper", 224), ("torchvision", 224), ("cifar", 32)])
def test_every_variant_gets_maps_of_its_input_size(variant, side):
    torch.manual_seed(0)
    model = AlexNet(ModelConfig(variant=variant, input_size=side, num_classes=4, width=0.125, init="kaiming")).eval()
    pipeline = Pipeline(kind="cifar10" if side == 32 else "imagenet", size=side, stored=side if side == 32 else 256,
                        mean=torch.full((3, 1, 1), 100.0), mean_kind="channel", std=torch.full((3, 1, 1), 50.0))
    e = Explainer(model, pipeline, torch.device("cpu"), window=side // 4, stride=side // 4)
    x = e.input(torch.randint(0, 256, (2, 3, pipeline.stored, pipeline.stored), dtype=torch.uint8))
    for method in ("gradcam", "occlusion"):
        maps = e.maps(x, torch.tensor([1, 3]), method)
        assert maps.shape == (2, side, side) and torch.isfinite(maps).all()
    assert (e.maps(x, torch.tensor([1, 3]), "gradcam") >= 0).all()


def test_a_conv5_cell_lands_on_the_centre_of_its_receptive_field():
    from alexnet.nn.fields import at_input, receptive_fields

    model = AlexNet(ModelConfig(num_classes=3, width=0.125))
    field = receptive_fields(model)["conv5"]
    assert (field.size, field.jump, field.start) == (163, 16, 15.0)  # the paper's network at 224: 13x13 cells
    cells = torch.zeros(1, 1, 13, 13)
    cells[0, 0, 6, 2] = 1.0
    heat = at_input(cells, field, 224)[0, 0]
    assert divmod(int(heat.argmax()), 224) == (15 + 6 * 16, 15 + 2 * 16) and float(heat.max()) == pytest.approx(1.0)


def test_a_class_is_named_by_wnid_then_name_then_index():
    from alexnet.use.explain import find_class

    classes = [{"index": i, "wnid": f"n{i:02d}", "name": str(n)} for i, n in enumerate([0, 1, 10, 11, 2, 3] + list(
        range(4, 10)))]
    assert find_class("10", classes) == 2 and find_class("2", classes) == 4  # names first: folders named by number
    assert find_class("n10", classes) == 10 and find_class("N03", classes) == 3
    cranes = [{"index": 0, "wnid": "n02012849", "name": "crane"}, {"index": 1, "wnid": "n03126707", "name": "crane"}]
    with pytest.raises(ValueError, match="2 classes are named 'crane' .n02012849, n03126707.: give the wnid"):
        find_class("crane", cranes)
    assert find_class("n03126707", cranes) == 1 and find_class("1", cranes) == 1
    with pytest.raises(ValueError, match="not a wnid, a class name or an index below 2"):
        find_class("5", cranes)


def test_bad_occlusion_squares_and_outputs_inside_the_inputs_are_refused(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sorted(SAMPLES.glob("*.JPEG"))[0], photos / "a.jpg")
    base = ["explain", "--checkpoint", str(ckpt), str(photos), "--out", str(photos / "maps")]
    assert main([*base, "--method", "occlusion", "--window", "16", "--stride", "40"]) == 2
    assert "--stride 40 must be between 1 and the window's side 16" in capsys.readouterr().err
    assert main([*base, "--json"]) == 0  # its maps go under photos/maps ...
    assert main([*base, "--json"]) == 0  # ... and are not read as photos the second time
    records = json_lines(capsys.readouterr().out)
    assert [r["file"] for r in records] == [str(photos / "a.jpg")] * 2
    assert main(["explain", "--checkpoint", str(ckpt), str(photos / "maps"), "--out", str(photos / "maps")]) == 2
    assert "no image files to explain outside --out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="without model.tower_devices"):
        Explainer(AlexNet(ModelConfig(num_classes=3, width=0.125, tower_devices="cpu,cpu")), PIPELINE,
                  torch.device("cpu"))


@pytest.mark.slow
def test_an_imported_caffe_network_is_explained_on_the_whole_squashed_photo(tmp_path, capsys):
    """BVLC Caffe's input: the whole photo squashed to 256x256, the centre 227, BGR folded into conv1; the
    map covers the photo but its border (the 14 of 256 the centre window leaves on each side)."""
    from fixtures import caffe_blobs, write_caffemodel

    model = write_caffemodel(tmp_path / "net.caffemodel", caffe_blobs())
    assert main(["import", "caffe", str(model), "--out", str(tmp_path / "caffe.pt")]) == 0
    photo = sorted(SAMPLES.glob("*.JPEG"))[3]
    assert main(["explain", "--checkpoint", str(tmp_path / "caffe.pt"), str(photo), "--out", str(tmp_path / "maps"),
                 "--json"]) == 0
    record = last_json(capsys.readouterr().out)
    heat = np.load(record["map"])
    with Image.open(photo) as image:
        assert heat.shape == (image.height, image.width)
    border = [round(14 / 256 * side) for side in heat.shape]
    assert heat[: border[0] - 2].max() == 0 and heat[:, : border[1] - 2].max() == 0
    assert heat[border[0] + 2:-border[0] - 2, border[1] + 2:-border[1] - 2].max() > 0
