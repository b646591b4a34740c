"""ImageNet prepare step and shard format, on tiny generated fixtures (official archives,
extracted folders, an ImageFolder, and every kind of bad file)."""

import io
import json
import tarfile
import zlib

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from safetensors.torch import load_file

from alexnet.data.decode import BadImage
from alexnet.data.decode import decode_stored as preprocess
from alexnet.data.imagenet import shards
from alexnet.data.imagenet.prepare import prepare_imagenet
from alexnet.data.imagenet.shards import ShardReader, encode, write_shard
from alexnet.data.imagenet.sources import DEVKIT_TAR, TRAIN_TAR, VAL_TAR
from alexnet.errors import UsageError
from fixtures import exif_rotated_jpeg

WNIDS = ["n00000001", "n00000002", "n00000003"]
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]  # class c is a solid colour far from the others
WORDS = ["red thing", "green thing", "blue thing, azure"]
IDS = [3, 1, 2]  # ILSVRC2012_ID of each wnid: deliberately not in wnid order
VAL_CLASSES = [2, 0, 1, 1, 2, 0]  # class of ILSVRC2012_val_00000001 ... 6
TRAIN_PER_CLASS = 3
TOLERANCE = 12  # JPEG q90 (twice) moves a solid colour by a few levels


def image_bytes(colour, fmt="JPEG", size=(40, 30), mode="RGB", **kwargs) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).convert(mode).save(out, fmt, **kwargs)
    return out.getvalue()


def colour_of(c, k):
    """Class c's colour, shifted a little per image k so that images differ."""
    return tuple(min(255, v + 3 * k) for v in COLOURS[c])


def train_files():
    return {(c, f"{wnid}_{k}.JPEG"): image_bytes(colour_of(c, k), quality=95)
            for c, wnid in enumerate(WNIDS) for k in range(TRAIN_PER_CLASS)}


def val_files():
    return {f"ILSVRC2012_val_{n:08d}.JPEG": image_bytes(colour_of(c, n), quality=95)
            for n, c in enumerate(VAL_CLASSES, start=1)}


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def devkit_files() -> dict[str, bytes]:
    rows = [(i, w, t, 0) for i, w, t in zip(IDS, WNIDS, WORDS)] + [(4, "n09999999", "internal node", 2)]
    synsets = np.zeros((len(rows),), dtype=[(f, "O") for f in ("ILSVRC2012_ID", "WNID", "words", "num_children")])
    for row, values in enumerate(rows):
        synsets[row] = values
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    truth = "".join(f"{IDS[c]}\n" for c in VAL_CLASSES)
    return {"ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth.encode()}


def make_official(root):
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / TRAIN_TAR, "w") as outer:
        for c, wnid in reversed(list(enumerate(WNIDS))):  # archive order is not sorted order
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as archive:
                for (cc, name), data in reversed(list(train_files().items())):
                    if cc == c:
                        add_bytes(archive, name, data)
            add_bytes(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(root / VAL_TAR, "w") as archive:
        for name, data in val_files().items():
            add_bytes(archive, name, data)
    with tarfile.open(root / DEVKIT_TAR, "w:gz") as archive:
        for name, data in devkit_files().items():
            add_bytes(archive, name, data)
    return root


def make_extracted(root, val_flat=True):
    for (c, name), data in train_files().items():
        (root / "train" / WNIDS[c]).mkdir(parents=True, exist_ok=True)
        (root / "train" / WNIDS[c] / name).write_bytes(data)
    for n, (name, data) in enumerate(val_files().items()):
        folder = root / "val" if val_flat else root / "val" / WNIDS[VAL_CLASSES[n]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if val_flat:
        for name, data in devkit_files().items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    return root


def make_imagefolder(root, classes=("cat", "dog"), per_class=3, varied=False):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / "train" / name).mkdir(parents=True)
        (root / "val" / name).mkdir(parents=True)
        for k in range(per_class):
            if varied:  # non-uniform pixels, for the statistics
                array = rng.integers(0, 256, (30 + 4 * k, 40, 3), dtype=np.uint8)
                out = io.BytesIO()
                Image.fromarray(array).save(out, "PNG")
                data = out.getvalue()
            else:
                data = image_bytes(colour_of(c, k))
            (root / "train" / name / f"{k}.png").write_bytes(data)
        (root / "val" / name / "0.jpg").write_bytes(image_bytes(colour_of(c, 5)))
    return root


def manifest(out, split):
    lines = (out / split / "manifest.tsv").read_text().splitlines()
    assert lines[0] == "index\tsource\tlabel\twnid"
    return [line.split("\t") for line in lines[1:]]


def mean_colour(image):
    return image.float().mean(dim=(1, 2))


def assert_colour(image, colour):
    assert (mean_colour(image) - torch.tensor(colour, dtype=torch.float32)).abs().max() < TOLERANCE


# --------------------------------------------------------------------------- layouts


def test_official_layout_labels_val_through_the_devkit(tmp_path, capsys):
    out = tmp_path / "out"
    summary = prepare_imagenet(make_official(tmp_path / "src"), out, workers=2, progress=False)
    assert summary["counts"] == {"train": 9, "val": 6} and summary["skipped"] == {"train": 0, "val": 0}

    classes = (out / "classes.tsv").read_text().splitlines()
    assert classes == ["index\twnid\tname"] + [f"{i}\t{w}\t{t}" for i, (w, t) in enumerate(zip(WNIDS, WORDS))]

    val = ShardReader(out / "val")
    rows = manifest(out, "val")
    assert [r[1] for r in rows] == [f"{VAL_TAR}/{name}" for name in val_files()]
    for i, row in enumerate(rows):
        expected = VAL_CLASSES[i]  # the i-th val image, via ID -> wnid -> sorted index
        assert int(row[2]) == expected == int(val.labels[i]) and row[3] == WNIDS[expected]
        assert_colour(val.read_many([i])[0], colour_of(expected, i + 1))

    train = ShardReader(out / "train")
    assert train.labels.tolist() == [c for c in range(3) for _ in range(TRAIN_PER_CLASS)]
    sources = [r[1] for r in manifest(out, "train")]
    assert sources[0] == f"{TRAIN_TAR}/{WNIDS[0]}.tar/{WNIDS[0]}_0.JPEG"
    assert sources == sorted(sources)  # sorted inside each class tar, whatever the archive order
    for i in range(len(train)):
        assert_colour(train.read_many([i])[0], colour_of(int(train.labels[i]), i % TRAIN_PER_CLASS))

    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert any("1,281,167" in w for w in warnings) and any("50,000" in w for w in warnings)
    assert "1,281,167" in capsys.readouterr().err
    assert json.loads((out / "prepared.json").read_text())["counts"] == {"train": 9, "val": 6}


def test_extracted_layouts_match_the_archives(tmp_path):
    official = tmp_path / "official-out"
    prepare_imagenet(make_official(tmp_path / "official"), official, workers=1, progress=False)
    for val_flat in (True, False):
        out = tmp_path / f"out-{val_flat}"
        prepare_imagenet(make_extracted(tmp_path / f"extracted-{val_flat}", val_flat), out, workers=1,
                         progress=False, shard_size=4)
        for split in ("train", "val"):
            a, b = ShardReader(official / split), ShardReader(out / split)
            order = list(range(len(a)))
            if split == "val" and not val_flat:  # val/<wnid>/ lists by class, then by name
                order = sorted(order, key=lambda i: VAL_CLASSES[i])
            assert [int(a.labels[i]) for i in order] == b.labels.tolist()
            assert [a.read_record(i) for i in order] == [b.read_record(i) for i in range(len(b))]
        assert manifest(out, "train")[0][1] == f"train/{WNIDS[0]}/{WNIDS[0]}_0.JPEG"
        names = (out / "classes.tsv").read_text()
        assert ("red thing" in names) == val_flat  # devkit words only where the devkit is


def test_imagefolder_with_any_class_names(tmp_path):
    out = tmp_path / "out"
    prepare_imagenet(make_imagefolder(tmp_path / "src", ("zebra", "ant")), out, workers=1, progress=False)
    assert (out / "classes.tsv").read_text().splitlines()[1:] == ["0\tant\tant", "1\tzebra\tzebra"]
    rows = manifest(out, "val")
    assert [(r[1], r[2], r[3]) for r in rows] == [("val/ant/0.jpg", "0", "ant"), ("val/zebra/0.jpg", "1", "zebra")]
    assert not json.loads((out / "report.json").read_text())["warnings"]  # not official: no count check


def test_bad_files_are_skipped_and_odd_ones_converted(tmp_path):
    src = make_imagefolder(tmp_path / "src", ("a",), per_class=1)
    folder = src / "train" / "a"
    colour = (200, 40, 90)
    kept = {
        "cmyk.JPEG": image_bytes(colour, mode="CMYK", quality=95),
        "gray.png": image_bytes(colour, "PNG", mode="L"),
        "rgba.png": image_bytes(colour, "PNG", mode="RGBA"),
        "png_named.JPEG": image_bytes(colour, "PNG"),
    }
    good = image_bytes(colour)
    bad = {
        "truncated.JPEG": ("truncated", good[: len(good) // 2]),
        "corrupt.JPEG": ("corrupt", good[:20] + np.random.default_rng(0).integers(0, 256, 600, np.uint8).tobytes()),
        "empty.JPEG": ("empty", b""),
        "text.JPEG": ("not an image", b"this is not a picture\n"),
    }
    for name, data in kept.items():
        (folder / name).write_bytes(data)
    for name, (_, data) in bad.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    summary = prepare_imagenet(src, out, workers=1, progress=False)
    assert summary["counts"]["train"] == 1 + len(kept) and summary["skipped"]["train"] == len(bad)

    report = json.loads((out / "report.json").read_text())
    reasons = {entry["source"]: entry["reason"] for entry in report["skipped"]}
    assert all(entry["split"] == "train" for entry in report["skipped"])
    for name, (reason, _) in bad.items():
        assert reason in reasons[f"train/a/{name}"]
    assert report["counts"]["train"] == {"images": 5, "skipped": 4}

    reader = ShardReader(out / "train")
    by_source = {row[1]: int(row[0]) for row in manifest(out, "train")}
    for name in ("cmyk.JPEG", "rgba.png", "png_named.JPEG"):
        assert_colour(reader.read_many([by_source[f"train/a/{name}"]])[0], colour)
    gray = reader.read_many([by_source["train/a/gray.png"]])[0].float()
    assert (gray[0] - gray[1]).abs().max() <= 3 and (gray[1] - gray[2]).abs().max() <= 3


def test_preprocess_shape_exif_and_16_bit():
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, :40] = (255, 0, 0)  # left half red, right half blue
    array[:, 40:] = (0, 0, 255)
    image = preprocess(exif_rotated_jpeg(array, quality=95))  # the EXIF rotation deliberately not applied
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 256, 256)
    assert image[0, :, :100].float().mean() > 200 and image[2, :, -100:].float().mean() > 200

    out = io.BytesIO()
    Image.new("I;16", (30, 20), 40000).save(out, "PNG")
    wide = preprocess(out.getvalue())
    assert wide.dtype == torch.uint8 and abs(int(wide[0, 0, 0]) - 40000 // 256) <= 1
    with pytest.raises(BadImage, match="empty"):
        preprocess(b"")


def test_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        prepare_imagenet(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no ImageNet layout"):
        prepare_imagenet(tmp_path / "empty", tmp_path / "out", progress=False)
    src = make_extracted(tmp_path / "nodevkit")
    for name in devkit_files():
        (src / name).unlink()
    with pytest.raises(UsageError, match="devkit"):
        prepare_imagenet(src, tmp_path / "out", progress=False)
    with pytest.raises(UsageError, match="format"):
        prepare_imagenet(src, tmp_path / "out", fmt="png", progress=False)
    with pytest.raises(UsageError, match="is the source folder"):
        prepare_imagenet(make_imagefolder(tmp_path / "folder"), tmp_path / "folder", progress=False)


# --------------------------------------------------------------------------- shards and statistics


def test_shards_round_trip_and_detect_damage(tmp_path):
    images = torch.randint(0, 256, (5, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    images[:, :, :128] = 40  # some smooth area so JPEG stays close
    for fmt in shards.FORMATS:
        folder = tmp_path / fmt
        folder.mkdir()
        records = [encode(image, fmt) for image in images]
        write_shard(folder / "shard-00000.bin", records[:3], [0, 1, 2], fmt)
        write_shard(folder / "shard-00001.bin", records[3:], [3, 4], fmt)
        reader = ShardReader(folder)
        assert len(reader) == 5 and reader.labels.tolist() == [0, 1, 2, 3, 4] and reader.format == fmt
        batch = reader.read_many([4, 0])
        assert batch.shape == (2, 3, 256, 256) and batch.dtype == torch.uint8
        if fmt == "raw":
            assert torch.equal(batch, images[[4, 0]])
        else:
            pil = torch.from_numpy(np.array(Image.open(io.BytesIO(records[4])).convert("RGB"))).permute(2, 0, 1)
            assert (batch[0].int() - pil.int()).abs().max() <= 2  # the same JPEG, another decoder
            assert (batch[1, :, :120].float() - 40).abs().max() < 4

        data = folder / "shard-00001.bin"
        blob = bytearray(data.read_bytes())
        blob[len(records[3]) + 10] ^= 0xFF  # inside record 4 = shard 1's record 1
        data.write_bytes(bytes(blob))
        fresh = ShardReader(folder)
        assert torch.equal(fresh.read_many([3]), reader.read_many([3]))
        with pytest.raises(UsageError, match=r"shard-00001\.bin: record 1 \(global index 4\).*re-run"):
            fresh.read_many([4])[0]
    index = shards.read_index(tmp_path / "raw" / "shard-00000.bin")
    assert index["crc32"][0] == zlib.crc32(encode(images[0], "raw"))


def test_statistics_match_a_direct_computation(tmp_path):
    src = make_imagefolder(tmp_path / "src", ("a", "b"), per_class=3, varied=True)
    out = tmp_path / "out"
    prepare_imagenet(src, out, workers=1, fmt="raw", progress=False, shard_size=4)
    files = sorted((src / "train").rglob("*.png"))
    stored = torch.stack([preprocess(f.read_bytes()) for f in files]).double()
    assert torch.equal(ShardReader(out / "train").read_many(range(6)).double(), stored)

    stats = load_file(out / "stats.safetensors")
    assert stats["mean_image"].shape == (3, 256, 256) and stats["mean_image"].dtype == torch.float32
    assert stats["eigval"].shape == (3,) and stats["eigvec"].shape == (3, 3)
    assert int(stats["image_count"]) == 6 and int(stats["pixel_count"]) == 6 * 256 * 256
    torch.testing.assert_close(stats["mean_image"].double(), stored.mean(0), rtol=0, atol=1e-4)
    pixels = stored.permute(1, 0, 2, 3).reshape(3, -1).numpy()
    covariance = np.cov(pixels, bias=True)
    np.testing.assert_allclose(stats["rgb_mean"].numpy(), pixels.mean(1), rtol=1e-6)
    np.testing.assert_allclose(stats["covariance"].numpy(), covariance, rtol=1e-5)
    vec, val = stats["eigvec"].double(), stats["eigval"].double()
    torch.testing.assert_close(vec.T @ vec, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(vec @ torch.diag(val) @ vec.T, torch.from_numpy(covariance), rtol=1e-4, atol=1e-2)
    assert torch.all(val[:-1] <= val[1:])


# --------------------------------------------------------------------------- resume


def test_resume_rebuilds_only_missing_shards(tmp_path):
    src = make_extracted(tmp_path / "src")
    out = tmp_path / "out"
    first = prepare_imagenet(src, out, workers=1, progress=False, shard_size=2)
    train = out / "train"
    assert first["shards_built"] == 5 + 3 and first["shards_reused"] == 0  # 9 train, 6 val images
    files = sorted(p for p in train.iterdir() if p.name.startswith("shard-"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in files}
    before = {name: (out / name).read_bytes() for name in ("classes.tsv", "report.json", "train/manifest.tsv",
                                                           "val/manifest.tsv")}
    stats = load_file(out / "stats.safetensors")  # (the file's metadata order is not fixed)
    records = [ShardReader(train).read_record(i) for i in range(9)]

    (train / "shard-00002.bin").unlink()
    (train / "shard-00002.idx.npz").unlink()
    second = prepare_imagenet(src, out, workers=2, progress=False, shard_size=2)
    assert second["shards_built"] == 1 and second["shards_reused"] == 7
    for path in files:
        changed = path.stat().st_mtime_ns != mtimes[path.name]
        assert changed == path.name.startswith("shard-00002."), path.name
    assert {name: (out / name).read_bytes() for name in before} == before
    assert all(torch.equal(value, stats[key]) for key, value in load_file(out / "stats.safetensors").items())
    assert [ShardReader(train).read_record(i) for i in range(9)] == records

    assert prepare_imagenet(src, out, workers=1, progress=False, shard_size=2)["shards_built"] == 0
    raw = prepare_imagenet(src, out, workers=1, fmt="raw", progress=False, shard_size=3)  # new options: rebuild
    assert raw["shards_built"] == 3 + 2 and ShardReader(train).format == "raw"
    assert not (train / "shard-00004.bin").exists()  # stale shards of the earlier run are gone


def test_squash_keeps_the_whole_photo_and_prepares_a_folder_of_its_own(tmp_path):
    """Caffe's data: the whole photo to 256x256, aspect ignored; prepared.json says so, and a run that asks
    for the other resize is refused in one line."""
    from alexnet.config import DataConfig
    from alexnet.data.datasets import load_prepared
    from alexnet.data.decode import decode_stored
    from alexnet.data.imagenet.prepare import prepare_imagenet
    from alexnet.errors import UsageError

    pixels = np.zeros((64, 256, 3), np.uint8)
    pixels[:, :64, 0] = 255  # red on the left quarter, blue on the right quarter: outside the centre square
    pixels[:, -64:, 2] = 255
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, "PNG")
    squashed = decode_stored(data.getvalue(), 32, "squash")
    centred = decode_stored(data.getvalue(), 32)
    assert squashed[0, :, :6].float().mean() > 240 and squashed[2, :, -6:].float().mean() > 240
    assert centred[0].max() < 20 and centred[2].max() < 20  # the centre square holds neither end
    src = tmp_path / "src"
    for split in ("train", "val"):
        (src / split / "n01").mkdir(parents=True)
        Image.fromarray(pixels).save(src / split / "n01" / "a.png")
    out = tmp_path / "squashed"
    prepare_imagenet(src, out, workers=1, progress=False, resize="squash")
    assert json.loads((out / "prepared.json").read_text())["resize"] == "squash"
    with pytest.raises(UsageError, match="prepared with resize squash but data.resize=center"):
        load_prepared(DataConfig(dataset="imagenet", path=str(out)), 0)
    assert load_prepared(DataConfig(dataset="imagenet", path=str(out), resize="squash"), 0).classes == ("n01",)
