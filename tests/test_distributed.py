"""DDP on CPU (gloo) through torchrun: 2 processes train the same weights as 1 with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet import load_checkpoint
from fixtures import tiny_training

# end to end: subprocesses; one worker builds the runs once (a module fixture is built per xdist worker)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp_runs")]

# No dropout, no augmentation (no random low-resolution windows either), fp32: the two runs see exactly the same
# global batches. conv1 stops learning after epoch 1 (optim.freeze_after): DDP is rebuilt for the layers that still
# learn.
SAME_BATCHES = tiny_training("optim.freeze_after=[1]", "optim.lr=0.01", "model.dropout=0", "data.crop_padding=0",
                             "data.flip=false", "data.low_res_epochs=0", "train.precision=\"fp32\"", "train.threads=1",
                             limit=63, batch=16, epochs=2, eval_batch=10)


def launcher(nproc: int) -> list[str]:
    """torchrun with ``nproc`` processes; one process runs alone, as a user runs it (the reference)."""
    if nproc == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def torchrun(nproc: int, out: Path, cache: Path) -> None:
    env = {**os.environ, "ALEXNET_DATA": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [*launcher(nproc), "-m", "alexnet.cli", "train", "--out", str(out), *SAME_BATCHES]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_cache):
    root = tmp_path_factory.mktemp("ddp")
    torchrun(1, root / "one", data_cache)  # the session's CIFAR-10 cache: decoded once for all tests
    torchrun(2, root / "two", data_cache)
    return root / "one", root / "two"


def test_two_processes_train_the_same_weights_as_one(runs):
    one, two = (load_checkpoint(run / "checkpoints" / "last.pt")["model"] for run in runs)
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=2e-5, rtol=1e-4, msg=key)


def test_sharded_evaluation_counts_every_example_once(runs):
    one, two = (json.loads((run / "summary.json").read_text()) for run in runs)
    assert one["examples"] == two["examples"] == 63  # odd: 32 + 31 across the two processes
    assert two["val_top1_err"] == pytest.approx(one["val_top1_err"], abs=1e-9)
    assert two["val_top5_err"] == pytest.approx(one["val_top5_err"], abs=1e-9)
    assert "x 2 processes" in two["device"]


def test_alexnet_eval_over_two_processes_matches_one(runs, data_cache):
    checkpoint = str(runs[0] / "checkpoints" / "last.pt")
    results = []
    for nproc in (1, 2):
        cmd = [*launcher(nproc), "-m", "alexnet.cli", "eval", "--checkpoint", checkpoint]
        env = {**os.environ, "ALEXNET_DATA": str(data_cache)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1  # rank 0 alone prints
        results.append(json.loads(lines[0]))
    assert results[0]["examples"] == results[1]["examples"] == 63
    assert results[1]["val_top1_err"] == pytest.approx(results[0]["val_top1_err"], abs=1e-9)
