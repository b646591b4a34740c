"""`alexnet import`: torchvision's and BVLC Caffe's weights, checked against outputs computed
independently (torchvision itself; a reference forward of Caffe's deploy net written out below)."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional as F

from alexnet.cli import main
from alexnet.runs.load import load_run
from alexnet.use.pretrained import caffe_messages
from fixtures import BGR_MEAN, CLASSES, HIDDEN, KERNELS, caffe_blobs, lrn_formula, write_caffemodel

# ------------------------------------------------------------------------------ torchvision


@pytest.fixture
def ram_path(tmp_path):
    """A folder in memory where the machine has one (/dev/shm): the full-size torchvision files
    (2 x 244 MB, fsync'ed) would otherwise time the disk rather than the import."""
    if not Path("/dev/shm").is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="alexnet-test-") as folder:
        yield Path(folder)


@pytest.mark.slow
def test_torchvision_import_reproduces_torchvision(ram_path, capsys):
    tmp_path = ram_path
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    torch.save(reference.state_dict(), tmp_path / "alexnet-owt.pth")
    assert main(["import", "torchvision", str(tmp_path / "alexnet-owt.pth"), "--out", str(tmp_path / "tv.pt")]) == 0
    assert '"source": "torchvision"' in capsys.readouterr().out

    loaded = load_run(tmp_path / "tv.pt")  # as alexnet eval / predict load it
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    ours = loaded.model(loaded.pipeline.eval_input(images))
    # torchvision's own preprocessing: centre 224 of the 256 image, x/255, normalised
    crop = torchvision.transforms.functional.center_crop(images, [224, 224]).float() / 255
    x = torchvision.transforms.functional.normalize(crop, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        torch.testing.assert_close(ours, reference(x), atol=1e-4, rtol=1e-4)
    assert len(loaded.classes) == 1000 and loaded.classes[0] == {"index": 0, "wnid": "n01440764", "name": "tench"}
    assert (loaded.pipeline.size, loaded.pipeline.stored, loaded.pipeline.resize) == (224, 256, "center")
    assert loaded.config.data.dataset == "imagenet" and loaded.config.model.variant == "torchvision"


# ------------------------------------------------------------------------------------ caffe

def caffe_forward(blobs, bgr):
    """BVLC's deploy net on the raw blobs, in float64: (N, 3, 227, 227) BGR minus mean -> softmax."""
    w = {name: [torch.from_numpy(a).double() for a in pair] for name, pair in blobs.items()}
    pool = lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True)  # noqa: E731 - Caffe rounds pool sizes up
    x = pool(lrn_formula(F.relu(F.conv2d(bgr, *w["conv1"], stride=4)), k=1.0))  # bvlc_alexnet: k=1
    x = pool(lrn_formula(F.relu(F.conv2d(x, *w["conv2"], padding=2, groups=2)), k=1.0))
    x = F.relu(F.conv2d(x, *w["conv3"], padding=1))
    x = F.relu(F.conv2d(x, *w["conv4"], padding=1, groups=2))
    x = pool(F.relu(F.conv2d(x, *w["conv5"], padding=1, groups=2)))
    x = F.relu(F.linear(x.flatten(1), *w["fc6"]))
    x = F.relu(F.linear(x, *w["fc7"]))
    return F.softmax(F.linear(x, *w["fc8"]), dim=1)


def caffe_input(images, mean_bgr):
    """What Caffe's test net sees: the centre 227 of the 256x256 image, BGR, minus the mean's centre."""
    crop = lambda t: t[..., 14:241, 14:241]  # noqa: E731 - (256 - 227) // 2 = 14
    mean = torch.as_tensor(mean_bgr, dtype=torch.float64)
    return crop(images.flip(1).double()) - (crop(mean) if mean.shape[-1] > 1 else mean)


def ours(checkpoint, images):
    loaded = load_run(checkpoint)
    with torch.no_grad():
        return F.softmax(loaded.model(loaded.pipeline.eval_input(images)), dim=1).double(), loaded


@pytest.mark.parametrize("layout,legacy", [("v1", True), ("new", False)])
def test_caffe_import_reproduces_caffes_deploy_net(tmp_path, layout, legacy):
    blobs = caffe_blobs()
    model = write_caffemodel(tmp_path / "net.caffemodel", blobs, layout, legacy)
    assert main(["import", "caffe", str(model), "--out", str(tmp_path / "caffe.pt")]) == 0
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)  # RGB, as stored
    softmax, loaded = ours(tmp_path / "caffe.pt", images)
    expected = caffe_forward(blobs, caffe_input(images, torch.tensor(BGR_MEAN).view(3, 1, 1)))
    assert expected.max() < 0.99  # not saturated: the comparison sees the numbers
    torch.testing.assert_close(softmax, expected, atol=1e-4, rtol=0)
    m = loaded.config.model
    assert (m.variant, m.width, m.towers, m.num_classes, m.lrn_k, m.conv1_padding, m.input_size) == \
        ("paper", 0.125, True, CLASSES, 1.0, 0, 227)
    assert (loaded.pipeline.size, loaded.pipeline.stored, loaded.pipeline.resize) == (227, 256, "squash")
    assert loaded.pipeline.std is None and loaded.classes is None  # 10 classes: not ImageNet's


def mean_image_bgr():
    ramp = torch.linspace(80, 140, 256, dtype=torch.float64)
    return torch.stack([ramp.view(1, 256).expand(256, 256), ramp.view(256, 1).expand(256, 256),
                        torch.full((256, 256), 120.0, dtype=torch.float64)])


def test_caffe_mean_npy_and_binaryproto(tmp_path):
    blobs = caffe_blobs(seed=1)
    model = write_caffemodel(tmp_path / "net.caffemodel", blobs)
    mean = mean_image_bgr()
    np.save(tmp_path / "mean.npy", mean.numpy())  # as BVLC's ilsvrc_2012_mean.npy: 3x256x256 BGR float64
    proto = caffe_messages()["BlobProto"](num=1, channels=3, height=256, width=256)
    proto.data.extend(mean.numpy().ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(proto.SerializeToString())
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    expected = caffe_forward(blobs, caffe_input(images, mean))
    for suffix in ("npy", "binaryproto"):
        out = tmp_path / f"{suffix}.pt"
        assert main(["import", "caffe", str(model), "--mean", str(tmp_path / f"mean.{suffix}"), "--out", str(out)]) == 0
        softmax, loaded = ours(out, images)
        torch.testing.assert_close(loaded.pipeline.mean, mean.flip(0).float())  # stored as RGB
        torch.testing.assert_close(softmax, expected, atol=1e-4, rtol=0)


def test_caffe_one_tower_and_imagenet_classes(tmp_path):
    blobs = caffe_blobs()
    c1, c2, c3, c4, _ = KERNELS
    rng = np.random.default_rng(2)
    for name, inputs in (("conv2", c1), ("conv4", c3), ("conv5", c4)):  # no groups: the one-tower net
        blobs[name] = (rng.standard_normal((blobs[name][0].shape[0], inputs, *blobs[name][0].shape[2:]),
                                           dtype=np.float32) * 0.05, blobs[name][1])
    blobs["fc8"] = (rng.standard_normal((1000, HIDDEN), dtype=np.float32) * 0.05, np.zeros(1000, np.float32))
    model = write_caffemodel(tmp_path / "net.caffemodel", blobs)
    assert main(["import", "caffe", str(model), "--out", str(tmp_path / "caffe.pt")]) == 0
    loaded = load_run(tmp_path / "caffe.pt")
    assert loaded.config.model.towers is False and len(loaded.classes) == 1000


# --------------------------------------------------------------------------------- refusals


def refused(capsys, *argv):
    """The command's one-line message (exit 2, no traceback)."""
    assert main(["import", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_damaged_and_foreign_files_are_refused_in_one_line(tmp_path, capsys):
    blobs = caffe_blobs()
    good = write_caffemodel(tmp_path / "good.caffemodel", blobs).read_bytes()
    pth = tmp_path / "weights.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, pth)
    no_fc8 = write_caffemodel(tmp_path / "no-fc8.caffemodel", {k: v for k, v in blobs.items() if k != "fc8"})
    files = {"cut.caffemodel": good[: len(good) // 2], "cut-at-layer.caffemodel": no_fc8.read_bytes(),
             "random.caffemodel": np.random.default_rng(0).bytes(5000),
             "image.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100), "empty.caffemodel": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        err = refused(capsys, "caffe", tmp_path / name, "--out", tmp_path / "x.pt")
        assert name in err and ("fc8" in err if name.startswith("cut-at") else True)
    assert "import torchvision" in refused(capsys, "caffe", pth, "--out", tmp_path / "x.pt")
    assert "truncated" in refused(capsys, "torchvision", pth, "--out", tmp_path / "x.pt")
    for name in ("cut.pth", "good.caffemodel"):  # a truncated torch.save file; Caffe's file
        (tmp_path / name).write_bytes(pth.read_bytes()[:2000] if name == "cut.pth" else good)
        assert name in refused(capsys, "torchvision", tmp_path / name, "--out", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_wrong_blob_shape_names_layer_and_both_shapes(tmp_path, capsys):
    blobs = caffe_blobs()
    blobs["conv3"] = (np.zeros((48, 32, 5, 5), np.float32), blobs["conv3"][1])
    model = write_caffemodel(tmp_path / "wide.caffemodel", blobs)
    err = refused(capsys, "caffe", model, "--out", tmp_path / "x.pt")
    assert "wide.caffemodel: conv3 weight is 48x32x5x5 but the network needs 48x32x3x3" in err
    state = {"features.0.weight": torch.zeros(64, 3, 5, 5), "classifier.6.weight": torch.zeros(10, 4096)}
    torch.save(state, tmp_path / "tv.pth")  # the first tensor checked has the wrong shape
    assert "features.0.weight is 64x3x5x5 but torchvision's AlexNet has 64x3x11x11" in refused(
        capsys, "torchvision", tmp_path / "tv.pth", "--out", tmp_path / "x.pt")


def test_blob_with_too_few_numbers_is_refused(tmp_path, capsys):
    blobs = caffe_blobs()
    model = write_caffemodel(tmp_path / "short.caffemodel", blobs, shape_of={("fc7", 2): (HIDDEN, HIDDEN + 1)})
    assert "damaged or truncated" in refused(capsys, "caffe", model, "--out", tmp_path / "x.pt")
