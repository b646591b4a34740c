"""Folders of photos shaped like a user's: what a file manager leaves beside the photos, files that are not what
their names say, odd images and odd class names. Bad files are skipped and reported by name, never a crash;
hidden and system folders are neither classes nor images; class names of any spelling work end to end.

Everything is prepared with one worker in this process and trained for one step of a tiny network: seconds.
"""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet.data.imagenet.prepare import prepare_imagenet
from fixtures import SAMPLES, last_json


def photo(path, k: int = 0, size=(64, 48), mode: str = "RGB", fmt: str | None = None):
    """A small photo (one of the ImageNet samples where the mirror is here, else a coloured square) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = sorted(SAMPLES.glob("*.JPEG"))[:40] if SAMPLES.is_dir() else []
    image = (Image.open(samples[k % len(samples)]).convert("RGB").resize(size) if samples
             else Image.new("RGB", size, (40 * k % 256, 90, 200)))
    image.convert(mode).save(path, fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg", ".jpe", ".jfif")
                                            else None))
    return path


def folder_of(root, classes, train: int = 2, val: int = 1):
    k = 0
    for c in classes:
        for split, n in (("train", train), ("val", val)):
            for i in range(n):
                photo(root / split / c / f"{i}.jpg", k)
                k += 1
    return root


def test_hidden_and_system_files_are_neither_classes_nor_images(tmp_path):
    """A folder copied from a Mac, unzipped, or kept on a NAS: .DS_Store, ._ AppleDouble files, Thumbs.db,
    desktop.ini, __MACOSX/, @eaDir/ (thumbnails that are real JPEGs), .ipynb_checkpoints/, and a link up the
    tree (a loop)."""
    from alexnet.data.images import image_files

    src = folder_of(tmp_path / "photos", ("cat", "dog"))
    for split in ("train", "val"):
        for where in (src / split, src / split / "cat"):
            (where / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
            (where / "._0.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
            (where / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
            (where / "desktop.ini").write_text("[.ShellClassInfo]")
        photo(src / split / "__MACOSX" / "._1.jpg")
        photo(src / split / "cat" / "@eaDir" / "0.jpg" / "SYNOPHOTO_THUMB_M.jpg")
        photo(src / split / ".ipynb_checkpoints" / "x.jpg")
        os.symlink("..", src / split / "dog" / "up")  # a link up the tree: its photos are not listed again
    summary = prepare_imagenet(src, tmp_path / "out", workers=1, progress=False)
    assert summary["counts"] == {"train": 4, "val": 2} and summary["skipped"] == {"train": 0, "val": 0}
    assert summary["warnings"] == [], "a file manager's own files are not worth a note"
    classes = (tmp_path / "out" / "classes.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[1] for line in classes] == ["cat", "dog"]
    files, _ = image_files([src])
    assert len(files) == 6 and all("@eaDir" not in str(p) and "/." not in str(p) for p in files)


def test_bad_and_odd_images_in_a_good_folder(tmp_path):
    """Every odd image that is an image is prepared; every bad file is skipped and named with its reason, and
    the rest of the folder is prepared: an empty file, half a JPEG, text named .jpg, a decompression bomb, a
    phone's HEIC photo; JPEG's other names (.jpe, .jfif, .JPG) count, a file without a suffix is noted."""
    src = folder_of(tmp_path / "photos", ("cat", "dog"))
    cat = src / "train" / "cat"
    good = {"gray.png": "L", "cmyk.jpg": "CMYK", "rgba.png": "RGBA", "pal.png": "P", "a.jpe": "RGB",
            "b.jfif": "RGB", "C.JPG": "RGB", "d.webp": "RGB", "e.tif": "RGB"}
    for name, mode in good.items():
        photo(cat / name, mode=mode)
    Image.new("I;16", (40, 30), 40000).save(cat / "16bit.png")
    frames = [Image.new("RGB", (40, 30), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(cat / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1)).save(cat / "one.png")
    Image.new("RGB", (4000, 2)).save(cat / "line.png")
    whole = (src / "train" / "dog" / "0.jpg").read_bytes()
    bad = {"zero.jpg": b"", "half.jpg": whole[:len(whole) // 2], "text.jpg": b"these are notes, not a photo\n",
           "phone.heic": b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64}
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, "PNG")  # 100 megapixels in a few kilobytes
    bad["bomb.png"] = buffer.getvalue()
    for name, data in bad.items():
        (cat / name).write_bytes(data)
    (cat / "noext").write_bytes(whole)
    summary = prepare_imagenet(src, tmp_path / "out", workers=1, progress=False)
    assert summary["counts"] == {"train": 4 + len(good) + 4, "val": 2}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {item["source"].rsplit("/", 1)[-1]: item["reason"] for item in report["skipped"]}
    assert set(reasons) == set(bad)
    assert reasons["zero.jpg"] == "empty file" and "truncated" in reasons["half.jpg"]
    assert "not an image (text)" in reasons["text.jpg"] and "decompression bomb" in reasons["bomb.png"]
    assert "HEIC" in reasons["phone.heic"] and "convert it to JPEG" in reasons["phone.heic"]
    assert any("train/cat/noext" in line for line in summary["warnings"])


def test_odd_class_names_train_evaluate_and_predict(tmp_path, monkeypatch, capsys):
    """Class folders named with spaces, dots, a leading dash and non-ASCII letters: trained on, evaluated on a
    folder of val/ photos alone (no train/), and predicted with their names."""
    from alexnet.cli import main

    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "cache"))
    names = ("-leading dash", "dots.in.name", "ünïcødé 猫", "with space")
    src = folder_of(tmp_path / "my photos", names)
    out = tmp_path / "run"
    tiny = ["optim.epochs=1", "model.width=0.0625", "data.batch_size=4", "data.workers=0", "train.progress=false",
            "train.compile_lrn=false"]
    assert main(["train", "--recipe", "imagenet", "--data", str(src), "--out", str(out), *tiny]) == 0
    assert last_json(capsys.readouterr().out)["classes"] == 4
    ckpt = out / "checkpoints" / "last.pt"
    assert [c["wnid"] for c in torch.load(ckpt, weights_only=True)["classes"]] == sorted(names)
    only_val = tmp_path / "val only"
    for name in names:
        photo(only_val / "val" / name / "0.jpg", 7)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(only_val)]) == 0
    assert last_json(capsys.readouterr().out)["examples"] == 4
    assert main(["predict", "--checkpoint", str(ckpt), str(only_val / "val" / "ünïcødé 猫" / "0.jpg"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert {p["name"] for p in record["top"]} <= set(names)


@pytest.mark.parametrize("layout", ["single class", "flat"])
def test_folders_that_are_not_a_training_set(tmp_path, monkeypatch, capsys, layout):
    """One class folder (or an extra level: train/images/<class>/) trains nothing; photos not sorted into
    classes are no layout at all: each is one line, before a run folder is made."""
    from fixtures import refused

    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "cache"))
    src = tmp_path / "photos"
    if layout == "flat":
        for k in range(3):
            photo(src / f"{k}.jpg", k)
    else:
        folder_of(src, ("images",))
    line = refused(f"train --recipe imagenet --data {src} --out {tmp_path / 'run'} data.batch_size=2", capsys)
    assert ("a classifier needs at least two" if layout != "flat" else "holds image files but no class folders") in line
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_decode_workers_die_with_a_killed_prepare():
    """A prepare killed outright (kill -9, the OOM killer) takes its decode workers with it: forked workers that
    share their queue's pipe would otherwise wait forever, holding their memory, while the user re-runs it."""
    script = ("import time\nfrom alexnet.data.pool import make_pool\npool = make_pool(2)\n"
              "[pool.submit(time.sleep, 60) for _ in range(2)]\ntime.sleep(1)\n"
              "print(*pool._processes, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
    finally:
        parent.kill()
        parent.wait()
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers), "a decode worker outlived the killed prepare"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
