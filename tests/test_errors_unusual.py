"""The ``raise UsageError`` sites test_errors.py's tables cannot reach with a plain command line: refusals under
torchrun (a fake world of two processes, no process group), a disk that fills during prepare, a batch file
that cannot be read, and a GPU index beyond the visible ones (a CPU machine made to show one GPU).

Each test either runs ``alexnet.cli.main`` (exit 2, one ``alexnet ...: error: ...`` line on stderr, no
traceback) or calls the library function that refuses, and checks the useful part of the one-line message.
Nothing here trains or starts a process group; the module takes a few seconds.

With tests/test_errors.py this reaches every site ``tests/usage_sites.py`` lists; measure it with
``coverage run --source=src/alexnet -m pytest tests/test_errors.py tests/test_errors_unusual.py``.
"""

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from alexnet.errors import UsageError
from alexnet.runtime import Dist
from fixtures import refused

TWO = Dist(rank=0, world=2, local_rank=0, local_world=2)  # rank 0 of a torchrun job of two
OTHER = Dist(rank=1, world=2, local_rank=1, local_world=2)  # the other rank


def one_line(error: UsageError) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder with its own data cache (``$ALEXNET_DATA``) and no data mirror."""
    folder = tmp_path / "work"
    (folder / "empty").mkdir(parents=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("ALEXNET_DATA", str(folder / "cache"))
    monkeypatch.setenv("ALEXNET_MIRROR", str(folder / "empty"))
    return folder


@pytest.fixture
def imagefolder(tmp_path):
    """An ImageFolder of real JPEGs: train/ and val/, two classes of two photos each."""
    root = tmp_path / "photos"
    for split in ("train", "val"):
        for c in range(2):
            folder = root / split / f"n{c}"
            folder.mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (48, 40), (100 * c, 60 * k, 90)).save(folder / f"{k}.jpg", quality=90)
    return root


# ---- torchrun: refusals that only a job of more than one process meets (a Dist of world 2, no process group)

def test_unprepared_imagefolder_under_torchrun(work, imagefolder):
    """--data an ImageFolder not yet prepared: one process prepares it into the cache, a torchrun job is refused
    (every rank would wait hours on rank 0, and other machines have other caches)."""
    from alexnet.config import DataConfig
    from alexnet.data.datasets import load_prepared

    for ddp in (TWO, OTHER):
        with pytest.raises(UsageError) as error:
            load_prepared(DataConfig(dataset="imagenet", path=str(imagefolder)), 0, ddp)
        message = one_line(error.value)
        assert f"--data {imagefolder} is not prepared: under torchrun prepare it first" in message
        assert f"`alexnet prepare imagenet --src {imagefolder} --out DIR`" in message
    with pytest.raises(UsageError) as error:  # the squashed resize names its option in the command to run
        load_prepared(DataConfig(dataset="imagenet", path=str(imagefolder), resize="squash"), 0, TWO)
    assert "--out DIR --resize squash`" in one_line(error.value)
    assert not (work / "cache").exists(), "nothing is prepared when refused"


def test_batch_not_divisible_by_processes():
    from alexnet.train.loop import _steps_per_epoch

    with pytest.raises(UsageError) as error:
        _steps_per_epoch(1000, 10, 3)
    assert one_line(error.value) == "data.batch_size=10 (the global batch) must be divisible by the 3 processes"
    assert _steps_per_epoch(1000, 12, 3) == 83  # divisible: full global batches


def test_cached_features_under_torchrun():
    from alexnet.train.probe import features

    with pytest.raises(UsageError) as error:
        features(SimpleNamespace(ddp=TWO), data=None)  # refused before the run or its data is looked at
    assert "train.cached_features computes its features in one process: run it without torchrun" in \
        one_line(error.value)


def test_checkpoint_failure_on_rank_0_stops_the_others(monkeypatch):
    """Rank 1 has nothing to write; it learns of rank 0's failed write through all_sum and stops too."""
    from alexnet.train import state

    summed = []
    monkeypatch.setattr(state, "gather", lambda obj, world: [obj] * world)  # no process group to gather over
    monkeypatch.setattr(state, "all_sum", lambda values, device: summed.append(values) or [1.0])  # rank 0: 1.0
    t = SimpleNamespace(ddp=OTHER, device=torch.device("cpu"))  # not main: its own write is never tried
    with pytest.raises(UsageError) as error:
        state.save(t, best=False)
    assert one_line(error.value) == ("rank 0 could not write a checkpoint (see its message); "
                                     "stopping every process")
    assert summed == [[0.0]], "this rank's own share of the sum: no failure"


def test_tower_split_under_torchrun():
    from alexnet import AlexNet, ModelConfig
    from alexnet.train.step import wrap

    model = AlexNet(ModelConfig(variant="paper", num_classes=3, width=1 / 16, tower_devices="cpu,cpu"))
    assert model.tower_devices
    with pytest.raises(UsageError) as error:
        wrap(model, TWO, torch.device("cpu"))
    message = one_line(error.value)
    assert "model.tower_devices (the paper's two-device split) runs in one process" in message
    assert "leave it empty to train with torchrun" in message
    assert wrap(model, Dist(), torch.device("cpu")) is model  # alone: the model itself


# ---- the command line: failures of the disk and the files, and a GPU index beyond the visible ones

def test_prepare_disk_full(work, imagefolder, monkeypatch, capsys):
    """Every shard (here one a split) fails to write (ENOSPC): prepare says how many, names the first and the
    reason, and how to resume. --workers 1 builds the shards in this process, where the patched writer is."""
    from alexnet.data.imagenet import shards

    def full(path, records, labels, fmt):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(shards, "write_shard", full)
    line = refused(f"prepare imagenet --src {imagefolder} --out {work / 'out'} --workers 1", capsys)
    assert "2 of 2 shards failed (first: train/shard-00000: OSError: [Errno 28] No space left on device:" in line
    assert "shard-00000.bin" in line
    assert "finished shards are kept: re-run the same command to resume" in line
    assert not (work / "out" / "prepared.json").exists()


def test_cifar_batch_unreadable(work, monkeypatch, capsys):
    """A cifar-10-batches-py folder whose data_batch_1 cannot be read (no read permission). Root reads it
    anyway, so there the read is refused as the kernel refuses another user."""
    import pickle

    import numpy as np

    batches = work / "cifar-10-batches-py"
    batches.mkdir()
    batch = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    for name in (*[f"data_batch_{k}" for k in range(1, 6)], "test_batch"):
        (batches / name).write_bytes(batch)
    locked = batches / "data_batch_1"
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root
        read_bytes = Path.read_bytes

        def refuse(path):
            if path == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return read_bytes(path)

        monkeypatch.setattr(Path, "read_bytes", refuse)
    try:
        line = refused(f"prepare cifar10 --src {batches}", capsys)
    finally:
        locked.chmod(0o644)
    assert f"{batches}: cannot read the batches ([Errno 13] Permission denied: '{locked}')" in line
    assert not list(work.rglob("*.pt")), "nothing decoded, nothing cached"


def test_gpu_index_beyond_the_visible(work, monkeypatch, capsys):
    """train.device=cuda:3 where one GPU is visible. On a CPU machine the one GPU is make-believe: the device
    is refused before anything touches it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = refused(f"train --out {work / 'out'} train.device=cuda:3", capsys)
    assert "device cuda:3 but this machine shows one GPU, cuda:0: name one of them, or cpu" in line
    assert not (work / "out").exists()


@pytest.mark.parametrize("code, fragment", [(errno.ENOSPC, "free disk space"),
                                            (errno.EACCES, "may not be written here")], ids=["full", "forbidden"])
def test_a_disk_that_refuses_a_write_is_one_line_and_leaves_no_half_file(work, monkeypatch, capsys, code, fragment):
    """Anywhere a command writes (here export's safetensors writer), a full or forbidden disk is one line that
    names the file and what to do; the export is written beside its name and moved there whole, so nothing
    half-written is left under --out's name."""
    from alexnet.use import export
    from fixtures import tiny_checkpoint

    ckpt = tiny_checkpoint(work / "tiny.pt", width=1 / 16)
    out = work / "exported" / "tiny.safetensors"

    def refuse(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")  # what a writer leaves when the disk fills in the middle
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(export, "save_file", refuse)
    line = refused(f"export --checkpoint {ckpt} --format safetensors --out {out}", capsys)
    assert os.strerror(code) in line and fragment in line and "tiny.safetensors" in line
    assert list(out.parent.iterdir()) == [], "no file, whole or half, under --out's name or beside it"


def test_map_location_beyond_the_visible_gpus(tmp_path, monkeypatch):
    """load_checkpoint(map_location='cuda:3') where one GPU is visible (make-believe on a CPU machine): refused
    before torch.load tries to put tensors there."""
    from alexnet import load_checkpoint
    from fixtures import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", width=1 / 16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError) as error:
        load_checkpoint(ckpt, map_location="cuda:3")
    assert one_line(error.value) == ("map_location='cuda:3' but this machine shows one GPU, cuda:0: name one of "
                                     "them, or 'cpu'")
