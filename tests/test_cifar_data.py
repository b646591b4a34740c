"""CIFAR-10 loading from generated fixtures: official batches, ImageFolder trees and tarballs,
balanced subsets, the decoded cache and the download path (no network needed)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.cifar import decode as cifar_decode
from alexnet.data.cifar import load as cifar
from alexnet.data.cifar import source as cifar_source
from alexnet.data.cifar.load import CLASSES, Split, load_cifar10
from alexnet.data.subset import balanced_indices
from alexnet.errors import UsageError

PER_BATCH = 4  # images in each fake official batch


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Point the cache at a temporary folder and hide any mirror the caller has set."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALEXNET_DATA", str(cache))
    monkeypatch.delenv("ALEXNET_MIRROR", raising=False)
    return cache


# --------------------------------------------------------------------------- fixtures


def _fake_batch(seed: int) -> dict:
    """A batch like the official ones: rows of R, G and B planes, labels as a list."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
    if seed == 1:  # a known pixel: image 0, row 5, column 7 is (200, 100, 50)
        data[0, 5 * 32 + 7], data[0, 1024 + 5 * 32 + 7], data[0, 2048 + 5 * 32 + 7] = 200, 100, 50
    labels = [int(x) for x in rng.integers(0, 10, size=PER_BATCH)]
    return {b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * PER_BATCH}


def _write_batches(folder: Path) -> Path:
    """Write data_batch_1..5 and test_batch into ``folder/cifar-10-batches-py``."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names, start=1):
        (batches / name).write_bytes(pickle.dumps(_fake_batch(seed), protocol=2))
    return batches


@pytest.fixture
def official_archive(tmp_path) -> Path:
    """A fake ``cifar-10-python.tar.gz`` laid out like the official one."""
    batches = _write_batches(tmp_path / "src")
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    return archive


def _png(label: int, index: int) -> bytes:
    """A 32x32 PNG whose pixels encode its class and index (exact after decoding)."""
    array = np.zeros((32, 32, 3), dtype=np.uint8)
    array[..., 0], array[..., 1], array[..., 2] = label * 20, index, 255 - label
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def folder_tarball(tmp_path) -> Path:
    """An ImageFolder tarball: 2 train + 1 test PNG per class, plus one corrupt train file."""
    path = tmp_path / "cifar10-png.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", 2), ("test", 1)):
            for label, name in enumerate(CLASSES):
                for index in range(count):
                    _add_bytes(tar, f"cifar10/{split}/{name}/{index:04d}.png", _png(label, index))
        _add_bytes(tar, "cifar10/train/cat/0099.png", b"this is not a png")
    return path


# --------------------------------------------------------------------------- official batches


def _check_official(train: Split, test: Split) -> None:
    assert train.images.shape == (5 * PER_BATCH, 3, 32, 32) and test.images.shape == (PER_BATCH, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.is_contiguous() and test.images.is_contiguous()
    assert train.images[0, :, 5, 7].tolist() == [200, 100, 50]
    expected = _fake_batch(1)
    assert train.labels[:PER_BATCH].tolist() == expected[b"labels"]
    assert torch.equal(train.images[1].flatten(), torch.from_numpy(expected[b"data"][1]))


def test_official_archive_and_extracted_folder(official_archive, tmp_path):
    _check_official(*load_cifar10(str(official_archive)))
    extracted = tmp_path / "extracted"
    with tarfile.open(official_archive) as tar:
        tar.extractall(extracted, filter="data")
    _check_official(*load_cifar10(str(extracted)))  # the folder holding cifar-10-batches-py
    _check_official(*load_cifar10(str(extracted / "cifar-10-batches-py")))
    _check_official(*load_cifar10(str(official_archive.parent)))  # a mirror-style folder


def test_unpickler_refuses_anything_but_numpy(tmp_path):
    batches = _write_batches(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    (batches / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(UsageError, match="refusing to load"):
        load_cifar10(str(batches))


# --------------------------------------------------------------------------- ImageFolder


def test_folder_tarball_skips_and_reports_a_corrupt_image(folder_tarball, capsys):
    train, test = load_cifar10(str(folder_tarball))
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert sorted(train.labels.tolist()) == sorted(list(range(10)) * 2)
    for split in (train, test):
        for image, label in zip(split.images, split.labels.tolist()):
            assert image[0].unique().tolist() == [label * 20]
            assert image[2].unique().tolist() == [255 - label]
    err = capsys.readouterr()
    assert "skipped 1 unreadable image(s): cifar10/train/cat/0099.png (" in err.err
    assert err.out == ""


def test_worker_pool_matches_in_process_decoding(folder_tarball, monkeypatch, capsys):
    serial_train, serial_test = cifar_decode._decode_folder_tar(folder_tarball)
    monkeypatch.setattr(cifar_decode, "_CHUNK", 4)  # several chunks, so the pool starts
    monkeypatch.setattr(cifar_decode, "_worker_count", lambda: 2)
    train, test = cifar_decode._decode_folder_tar(folder_tarball)
    assert torch.equal(train.images, serial_train.images) and torch.equal(train.labels, serial_train.labels)
    assert torch.equal(test.images, serial_test.images)
    assert capsys.readouterr().err.count("cifar10/train/cat/0099.png") == 2


def test_folder_tree_and_wrong_class_names(folder_tarball, tmp_path):
    tree = tmp_path / "tree"
    with tarfile.open(folder_tarball) as tar:
        tar.extractall(tree, filter="data")
    big = np.full((40, 48, 3), 7, dtype=np.uint8)  # not 32x32: resized
    Image.fromarray(big).save(tree / "cifar10" / "test" / "dog" / "0005.png")
    train, test = load_cifar10(str(tree))  # the folder holding a single cifar10/ folder
    assert len(train) == 20 and len(test) == 11
    assert test.images[test.labels == CLASSES.index("dog")].shape == (2, 3, 32, 32)

    (tree / "cifar10" / "test" / "dog").rename(tree / "cifar10" / "test" / "doggo")
    with pytest.raises(UsageError, match="doggo"):
        load_cifar10(str(tree / "cifar10"))


# --------------------------------------------------------------------------- subsets


def _synthetic_split(n: int = 1000) -> Split:
    """Labels cycle through the classes; channel 0 holds the label, channel 1 the index // 10."""
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0] = labels.view(n, 1, 1).to(torch.uint8)
    images[:, 1] = (torch.arange(n) // 10).view(n, 1, 1).to(torch.uint8)
    return Split(images, labels.to(torch.int64))


def _identities(split: Split) -> list[int]:
    return (split.images[:, 1, 0, 0].long() * 10 + split.images[:, 0, 0, 0].long()).tolist()


def balanced_subset(split: Split, n: int, seed: int) -> Split:
    picked = balanced_indices(split.labels, 10, n, seed)
    return Split(split.images[picked], split.labels[picked])


def test_balanced_subset_counts_and_seeds():
    split = _synthetic_split()
    subset = balanced_subset(split, 25, seed=3)
    assert torch.bincount(subset.labels, minlength=10).tolist() == [3] * 5 + [2] * 5
    assert torch.equal(subset.images[:, 0, 0, 0].long(), subset.labels)
    assert len(set(_identities(subset))) == 25
    assert torch.bincount(balanced_subset(split, 50, seed=0).labels).tolist() == [5] * 10
    same = balanced_subset(split, 25, seed=3)
    assert torch.equal(same.labels, subset.labels) and torch.equal(same.images, subset.images)
    assert set(_identities(balanced_subset(split, 25, seed=4))) != set(_identities(subset))
    assert torch.equal(balanced_indices(split.labels, 10, 1000, seed=0), torch.arange(len(split)))


def test_limit_applies_to_both_splits(folder_tarball):
    train, test = load_cifar10(str(folder_tarball), limit=10, seed=1)
    assert len(train) == 10 and len(test) == 10
    assert torch.bincount(train.labels, minlength=10).tolist() == [1] * 10
    again, _ = load_cifar10(str(folder_tarball), limit=10, seed=1)
    assert torch.equal(again.images, train.images)
    _, full = load_cifar10(str(folder_tarball))
    small, every = load_cifar10(str(folder_tarball), limit=5, seed=1, val_limit=0)  # data.val_limit=0: all
    _, eight = load_cifar10(str(folder_tarball), limit=5, seed=1, val_limit=8)
    assert len(small) == 5 and len(every) == len(full) > 8 and len(eight) == 8


# --------------------------------------------------------------------------- errors


def test_missing_or_unknown_path_names_it(tmp_path):
    missing = tmp_path / "no" / "such.tar.gz"
    with pytest.raises(UsageError, match=str(missing)):
        load_cifar10(str(missing))
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    with pytest.raises(UsageError, match="not a recognised CIFAR-10 layout"):
        load_cifar10(str(junk))


# --------------------------------------------------------------------------- cache


def test_cache_is_written_and_reused(folder_tarball, isolated_cache, monkeypatch):
    train, test = load_cifar10(str(folder_tarball))
    cached = list((isolated_cache / "cifar10").glob("folder-tar-*.pt"))
    assert len(cached) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(cifar, "decode_source", no_decoding)
    again, again_test = load_cifar10(str(folder_tarball))
    assert torch.equal(again.images, train.images) and torch.equal(again_test.labels, test.labels)
    assert torch.equal(load_cifar10(str(cached[0]))[0].images, train.images)  # a cache file as --data


def test_default_source_is_remembered(official_archive, isolated_cache, monkeypatch):
    monkeypatch.setenv("ALEXNET_MIRROR", str(official_archive.parent))
    train, _ = load_cifar10()
    assert (isolated_cache / "cifar10" / "default.pt").is_file()
    shutil.rmtree(official_archive.parent)
    monkeypatch.delenv("ALEXNET_MIRROR")
    assert torch.equal(load_cifar10()[0].images, train.images)


# --------------------------------------------------------------------------- download


def test_download_failure_is_one_clean_usage_error(tmp_path, isolated_cache, monkeypatch):
    mirror = tmp_path / "empty-mirror"
    mirror.mkdir()
    monkeypatch.setenv("ALEXNET_MIRROR", str(mirror))
    monkeypatch.setattr(cifar_source, "URL", "http://127.0.0.1:9/nonexistent")
    monkeypatch.setattr(cifar_source, "DOWNLOAD_BACKOFF_S", 0.01)
    monkeypatch.setattr(cifar_source, "DOWNLOAD_TIMEOUT_S", 2.0)
    with pytest.raises(UsageError) as caught:
        load_cifar10()
    message = str(caught.value)
    assert "\n" not in message
    expected = (str(mirror), str(isolated_cache / "cifar10"), "--data", "ALEXNET_MIRROR",
                "cifar-10-python.tar.gz")
    for part in expected:
        assert part in message
    assert not list((isolated_cache / "cifar10").glob("*.part"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """Serve ``tmp_path/www`` on a local port; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = lambda *a, **k: _QuietHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_checks_md5_then_loads(official_archive, http_folder, isolated_cache, monkeypatch):
    folder, base = http_folder
    shutil.copy(official_archive, folder / "c.tar.gz")
    monkeypatch.setattr(cifar_source, "URL", f"{base}/c.tar.gz")
    monkeypatch.setattr(cifar_source, "MD5", "0" * 32)
    with pytest.raises(UsageError, match="md5"):
        load_cifar10()
    assert not list((isolated_cache / "cifar10").glob("cifar-10-python.tar.gz*"))

    monkeypatch.setattr(cifar_source, "MD5", hashlib.md5(official_archive.read_bytes()).hexdigest())
    _check_official(*load_cifar10())
    assert (isolated_cache / "cifar10" / "cifar-10-python.tar.gz").is_file()
