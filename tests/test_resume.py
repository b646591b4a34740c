"""Surviving stops: kill -9 and resume gives the same weights bit for bit, SIGTERM checkpoints and
exits 0, torchrun restarts a killed worker, failed writes keep the last checkpoint, nan stops."""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet import load_checkpoint
from alexnet.cli import main
from fixtures import last_json, tiny_training

# end to end: subprocesses; one worker builds the uninterrupted run once (module fixtures are per worker)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume_runs")]

# 8 steps per epoch, a checkpoint every 3 steps; dropout, crops, flips and bf16 all stay on, so
# every random state must be restored for the weights to match.
TINY = ["--recipe", "cifar10", *tiny_training("train.threads=1", "train.checkpoint_every_steps=3", limit=512, epochs=2)]


def cli(*args, env_extra=None, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "alexnet.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_cache_env):
    out = tmp_path_factory.mktemp("resume") / "whole"
    done = cli("train", "--out", str(out), *TINY, env_extra=data_cache_env)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def data_cache_env(data_cache):
    return {"ALEXNET_DATA": str(data_cache)}


@pytest.mark.parametrize("step, resumes_at", [(5, "inside epoch 1 at step 3"), (8, "after epoch 1")])
def test_kill_9_then_resume_gives_identical_weights(uninterrupted, tmp_path, data_cache_env, step, resumes_at):
    out = tmp_path / "killed"
    killed = cli("train", "--out", str(out), *TINY, env_extra={**data_cache_env, "ALEXNET_FAULT_AT_STEP": str(step)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = cli("train", "--out", str(out), "--resume", env_extra=data_cache_env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {out / 'checkpoints' / 'last.pt'} {resumes_at}" in resumed.stderr
    ours, theirs = weights(out), weights(uninterrupted)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_checkpoint_files_keep_the_last_k_and_best(uninterrupted):
    folder = uninterrupted / "checkpoints"
    steps = sorted(p.name for p in folder.glob("step-*.pt"))
    assert steps == ["step-000000015.pt", "step-000000016.pt"]  # saves at 3, 6, 8, 9, 12, 15, 16: keep 2
    assert os.path.samefile(folder / "last.pt", folder / "step-000000016.pt")  # a link, not a copy
    assert (folder / "best.pt").is_file() and not list(folder.glob(".*.tmp"))


def test_sigterm_checkpoints_and_exits_0_within_60_s(tmp_path, data_cache_env):
    out = tmp_path / "preempted"
    args = [*TINY, "optim.epochs=200", "train.checkpoint_every_steps=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **data_cache_env}
    proc = subprocess.Popen([sys.executable, "-m", "alexnet.cli", "train", "--out", str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # wait until the loop runs
            if line.startswith("training "):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert time.monotonic() - sent < 60
    summary = last_json(stdout)
    assert summary["stopped"] == "SIGTERM" and summary["step"] > 0
    assert "--resume" in stderr
    progress = load_checkpoint(out / "checkpoints" / "last.pt")["progress"]
    assert progress["step"] == summary["step"]  # the step it was on was finished and saved


def test_torchrun_restarts_a_killed_worker_which_resumes(tmp_path, data_cache_env):
    out = tmp_path / "elastic"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALEXNET_FAULT_AT_STEP": "5:1",
           **data_cache_env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "alexnet.cli", "train", "--out", str(out), *TINY, "optim.epochs=1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr and "inside epoch 1 at step 3" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["step"] == 8


# --------------------------------------------------------------------------- in-process


SMALL = ["--recipe", "cifar10", *tiny_training("train.checkpoint_every_steps=1")]


@pytest.fixture
def nan_at_step_3(monkeypatch):
    """The third training batch turns into nan (as a diverging run would)."""
    from alexnet.data.pipeline import Pipeline

    real, calls = Pipeline.train, []

    def poisoned(*args, **kwargs):
        x = real(*args, **kwargs)
        calls.append(1)
        return x * float("nan") if len(calls) == 3 else x

    monkeypatch.setattr(Pipeline, "train", poisoned)


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, nan_at_step_3, capsys, data_cache):
    out = tmp_path / "nan"
    assert main(["train", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "nan or inf at step 3" in err and "train.on_nonfinite=skip" in err
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nan_loss_is_skipped_when_asked(tmp_path, nan_at_step_3, capsys, data_cache):
    out = tmp_path / "skip"
    assert main(["train", "--out", str(out), *SMALL, "train.on_nonfinite=\"skip\""]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["skipped_steps"] == 1 and summary["step"] == 4
    model = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys, data_cache):
    import alexnet.runs.checkpoint as checkpoint_module

    real, saves = checkpoint_module.torch.save, []

    def disk_full_on_third(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full_on_third)
    out = tmp_path / "full"
    assert main(["train", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in err and "previous checkpoint" in err and "--resume" in err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["step"] == 2
    assert not list((out / "checkpoints").glob(".*.tmp"))


class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ.get('BOOM_MARK', '/tmp/alexnet-boom'))}",))


@pytest.mark.parametrize("command", ["train", "eval", "ensemble", "export", "figures"])
def test_every_command_refuses_a_malicious_checkpoint(tmp_path, monkeypatch, capsys, command):
    mark = tmp_path / "ran"
    monkeypatch.setenv("BOOM_MARK", str(mark))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    evil = run / "checkpoints" / "last.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Boom()}, f, protocol=2)
    good = tmp_path / "good.pt"
    from alexnet import AlexNet, ModelConfig
    from alexnet.runs.checkpoint import save_checkpoint

    save_checkpoint(good, AlexNet(ModelConfig(variant="cifar", num_classes=10, input_size=32, width=0.125)))
    args = {"train": ["train", "--out", str(run), "--resume"],
            "eval": ["eval", "--checkpoint", str(evil)],
            "ensemble": ["eval", "--checkpoint", str(good), "--ensemble", str(evil)],
            "export": ["export", "--checkpoint", str(evil), "--out", str(tmp_path / "w.safetensors")],
            "figures": ["figures", "--checkpoint", str(evil)]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and str(evil) in err[0]
    assert not mark.exists()
