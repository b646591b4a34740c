"""alexnet predict: any file a user brings, one record each, the checkpoint's own preprocessing."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.decode import BadImage
from alexnet.data.images import decode_file
from alexnet.data.pipeline import Pipeline
from alexnet.runs.load import load_run
from alexnet.use.predictor import Predictor
from fixtures import SAMPLES, TINY_CLASSES, encoded, exif_rotated_jpeg, json_lines, tiny_checkpoint

CLASSES = TINY_CLASSES
PHOTOS = sorted(SAMPLES.glob("*.JPEG"))[:4]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def photo(size=(320, 240)) -> Image.Image:
    """A real photo's top-left corner, sides a multiple of 16 (JPEG blocks rotate cleanly)."""
    return Image.open(PHOTOS[0]).convert("RGB").crop((0, 0, *size))


def bomb_png() -> bytes:
    """A 1x1 PNG whose header claims 20000x20000 pixels (CRC fixed, so only the size is wrong)."""
    data = bytearray(encoded(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def rotated_jpeg(image: Image.Image) -> bytes:
    """``image`` stored turned a quarter left, with EXIF orientation 6 saying how to show it upright."""
    return exif_rotated_jpeg(image.transpose(Image.Transpose.ROTATE_90), quality=100, subsampling=0)


def upright_png(jpeg: bytes) -> bytes:
    """The pixels a rotated JPEG stores, turned upright by numpy (not by EXIF), kept losslessly."""
    stored = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return encoded(Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))), "PNG")  # a quarter right


GOOD = {  # file name -> bytes, each must be predicted
    "png_named.JPEG": lambda: encoded(photo(), "PNG"),
    "cmyk.jpg": lambda: encoded(photo().convert("CMYK"), "JPEG"),
    "gray.jpg": lambda: encoded(photo().convert("L"), "JPEG"),
    "rgba.png": lambda: encoded(photo().convert("RGBA"), "PNG"),
    "upright.png": lambda: upright_png(rotated_jpeg(photo())),
    "rotated.jpg": lambda: rotated_jpeg(photo()),
    "one_pixel.png": lambda: encoded(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG"),
    "wide_1000x3.png": lambda: encoded(photo().resize((1000, 3)), "PNG"),
}
BAD = {  # file name -> (bytes, words the error names)
    "empty.jpg": (lambda: b"", "empty"),
    "text.jpg": (lambda: b"this is not an image\n", "text"),
    "truncated.jpg": (lambda: PHOTOS[1].read_bytes()[:5000], "truncated JPEG"),
    "corrupt_header.jpg": (lambda: PHOTOS[2].read_bytes()[:3] + b"\x00" * 200 + PHOTOS[2].read_bytes()[203:], "JPEG"),
    "bomb.png": (bomb_png, "decompression bomb"),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    (root / "photos").mkdir()
    for path in PHOTOS:
        (root / "photos" / path.name).write_bytes(path.read_bytes())
    for name, make in GOOD.items():
        (root / name).write_bytes(make())
    for name, (make, _) in BAD.items():
        (root / name).write_bytes(make())
    (root / "notes.txt").write_text("not an image name: never read")
    return root


def predict_json(capsys, *args):
    code = main(["predict", *map(str, args), "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, json_lines(out), err


@pytest.mark.slow
def test_folder_of_mixed_files_one_record_each(checkpoint, folder, capsys):
    code, records, err = predict_json(capsys, "--checkpoint", checkpoint, folder, "--batch-size", "5")
    assert code == 1  # some files failed, the others were predicted
    names = [r["file"].split("/")[-1] for r in records]
    expected = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix != ".txt" and p.is_file())
    assert [r["file"] for r in records] == [str(folder / e) for e in expected]  # recursive, sorted
    by_name = dict(zip(names, records))
    for name in list(GOOD) + [p.name for p in PHOTOS]:
        top = by_name[name]["top"]
        assert [t["name"] for t in top] and {t["name"] for t in top} == {"cat", "dog", "fish"}
        assert sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-4)
        assert set(top[0]) == {"index", "wnid", "name", "prob"}
    for name, (_, words) in BAD.items():
        assert words in by_name[name]["error"], (name, by_name[name]["error"])
        assert f"{name}: " in err  # a stderr line names the file
    assert "5 of 17 files could not be read" in err


@pytest.mark.slow
def test_probabilities_match_predictor_and_exif_is_applied(checkpoint, folder, capsys):
    files = [folder / "photos" / PHOTOS[0].name, folder / "upright.png", folder / "rotated.jpg"]
    code, records, _ = predict_json(capsys, "--checkpoint", checkpoint, *files, "--topk", "3")
    assert code == 0
    predictor = Predictor.from_run(load_run(checkpoint), "cpu")
    images = torch.stack([decode_file(f.read_bytes(), predictor.pipeline) for f in files])
    expected = predictor.top(predictor.probabilities(images), 3)
    for record, top in zip(records, expected):
        assert [t["index"] for t in record["top"]] == [t["index"] for t in top]
        assert [t["prob"] for t in record["top"]] == pytest.approx([t["prob"] for t in top], abs=1e-5)
    upright, rotated = records[1]["top"], records[2]["top"]
    assert [t["index"] for t in upright] == [t["index"] for t in rotated]
    assert [t["prob"] for t in upright] == pytest.approx([t["prob"] for t in rotated], abs=1e-5)
    up, rot = (decode_file(f.read_bytes(), predictor.pipeline) for f in files[1:])
    assert torch.equal(up, rot)
    turned = decode_file(encoded(photo().transpose(Image.Transpose.ROTATE_90), "PNG"), predictor.pipeline)
    assert (predictor.probabilities(turned[None]) - predictor.probabilities(up[None])).abs().max() > 1e-3


def test_ten_crops_and_readable_lines(checkpoint, capsys):
    assert main(["predict", "--checkpoint", str(checkpoint), str(PHOTOS[0]), "--crops", "10", "--topk", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(str(PHOTOS[0])) and out[0].count(", ") == 1
    predictor = Predictor.from_run(load_run(checkpoint), "cpu")
    image = decode_file(PHOTOS[0].read_bytes(), predictor.pipeline)[None]
    ten, one = predictor.probabilities(image, 10), predictor.probabilities(image, 1)
    assert ten.shape == one.shape == (1, 3) and not torch.allclose(ten, one)
    assert float(ten.sum()) == pytest.approx(1.0, abs=1e-5)


def test_every_view_count_predict_offers_works_or_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    """A CIFAR-10 network takes 1, 2, 4 and 10 views (4: its whole image and centre window, each mirrored);
    an ImageNet-kind network refuses 4 before reading any image."""
    from alexnet.data import views
    from fixtures import recipe_checkpoint

    cifar = recipe_checkpoint(tmp_path / "cifar.pt", "cifar10", ["model.width=0.25"])  # 28x28 windows of 32x32
    predictor = Predictor.from_run(load_run(cifar), "cpu")
    image = decode_file(PHOTOS[0].read_bytes(), predictor.pipeline)[None]
    probs = {n: predictor.probabilities(image, n) for n in views.COUNTS}
    for n, p in probs.items():
        assert p.shape == (1, 10) and float(p.sum()) == pytest.approx(1.0, abs=1e-5), n
    assert not torch.allclose(probs[4], probs[2])  # the centre windows count too
    for n in views.COUNTS:
        code, records, _ = predict_json(capsys, "--checkpoint", cifar, PHOTOS[0], "--crops", n)
        assert code == 0 and records[0]["top"][0]["name"] in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                              "frog", "horse", "ship", "truck")
    code, records, err = predict_json(capsys, "--checkpoint", checkpoint, PHOTOS[0], "--crops", 4)
    assert code == 2 and not records and "--crops 4" in err and "use 1, 2 or 10 views" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_usage_exits_2(checkpoint, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(checkpoint), str(PHOTOS[0]), "--topk", "0"]) == 2
    assert main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(PHOTOS[0])]) == 2
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path)]) == 2  # a folder without images
    err = capsys.readouterr().err
    assert "--topk must be at least 1" in err and "not found" in err and "no image files" in err


def test_missing_file_is_an_error_record(checkpoint, tmp_path, capsys):
    code, records, err = predict_json(capsys, "--checkpoint", checkpoint, tmp_path / "gone.jpg", PHOTOS[0])
    assert code == 1 and "error" in records[0] and "top" in records[1] and "gone.jpg" in err


@pytest.mark.parametrize("data, reason", [
    (b"\x89PNG\r\n\x1a\n", "truncated PNG data"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "truncated JPEG data"),
    (b"GIF89a", "truncated GIF data"),
    (b"%PDF-1.4 hello", "not an image Pillow can read (text)"),
])
def test_decode_file_reasons(data, reason):
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.zeros(3, 256, 256), mean_kind="image")
    with pytest.raises(BadImage, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        decode_file(data, pipeline)


def test_decode_file_shapes_for_odd_images():
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.zeros(3, 256, 256), mean_kind="image")
    for make in GOOD.values():
        image = decode_file(make(), pipeline)
        assert image.dtype == torch.uint8 and image.shape == (3, 256, 256)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent: laid on white, not black
    assert int(decode_file(encoded(rgba, "PNG"), pipeline).min()) == 255
