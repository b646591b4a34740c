"""`alexnet bench data|model|train` end to end at toy sizes (bench data on a few generated JPEGs,
bench model on a quarter-width net, bench train on CIFAR-10) and benchmarks/gpu_check.sh --smoke:
the JSON lines and their keys. No speed claims here; those live in benchmarks/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main
from fixtures import last_json

KEYS = ("images_per_s_per_core", "raw_images_per_s_per_core", "torchvision_images_per_s_per_core",
        "speedup_per_core_vs_torchvision", "prepare_images_per_s_per_core",
        "pil_prepare_images_per_s_per_core", "prepare_speedup_vs_pil")


def test_bench_data_prints_one_json_line_with_positive_rates(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for k in range(6):
        pixels = rng.integers(0, 256, (300 + 20 * k, 400, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"n0000000{k % 2}_{k}.JPEG", quality=90)
    assert main(["bench", "data", "--src", str(tmp_path), "--json", "--images", "12", "--seconds", "0.05"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["images"] == 12 and result["source_images"] == 6
    for key in KEYS:
        assert result[key] > 0, key


def test_bench_data_rejects_a_folder_without_images(tmp_path, capsys):
    assert main(["bench", "data", "--src", str(tmp_path)]) == 2
    assert "holds no image files" in capsys.readouterr().err


# --------------------------------------------------------------------------- bench model, bench train, gpu_check.sh

MODEL_KEYS = ("train_images_per_s", "torchvision_train_images_per_s", "train_speedup_vs_torchvision",
              "inference_images_per_s", "torchvision_inference_images_per_s", "inference_speedup_vs_torchvision")
SPLIT_KEYS = ("data_wait_s", "to_device_s", "augment_s", "compute_s")


def _one_json_line(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_bench_model_prints_one_json_line_with_rates_and_settings(capsys):
    # a quarter-width paper net (hidden --width) keeps this to seconds on a busy two-core CPU
    assert main(["bench", "model", "--json", "--batch-size", "2", "--steps", "1", "--rounds", "1",
                 "--device", "cpu", "--no-compile", "--width", "0.25"]) == 0
    result = _one_json_line(capsys)
    for key in MODEL_KEYS:
        assert result[key] > 0, key
    assert result["batch_size"] == 2 and result["threads"] >= 1 and result["device"] == "cpu"
    assert result["precision"] == "bf16" and result["channels_last"] and result["compile"] == []
    assert result["train_variant"] == "eager" and result["inference_variant"] in ("eager", "bf16_weights")
    assert result["torch_version"] and result["cpu"]
    assert result["train_tower_split_images_per_s"] > 0 and result["inference_tower_split_images_per_s"] > 0


def test_bench_train_on_cifar_splits_the_step_time(data_cache, capsys):
    from fixtures import TARBALL

    assert main(["bench", "train", "--recipe", "cifar10", "--steps", "2", "--warmup", "1", "--json", "--epoch", "4",
                 f"data.path={json.dumps(str(TARBALL))}", "data.limit=64", "data.batch_size=16",
                 "model.width=0.25", "train.device=cpu", "train.progress=false", "data.low_res_size=28",
                 "data.low_res_epochs=5", "optim.freeze_after=[2, 4, 6]"]) == 0
    result = _one_json_line(capsys)
    assert result["epoch"] == 4 and result["input_size"] == 28 and result["frozen"] == ["conv1", "conv2"]
    assert result["bench"] == "train" and result["steps"] == 2 and result["batch_size"] == 16
    assert result["images_per_s"] > 0 and result["compute_s"] > 0
    assert all(result[k] >= 0 for k in SPLIT_KEYS)
    assert sum(result[k] for k in SPLIT_KEYS) <= result["seconds"] * 1.01
    # CIFAR-10 sits in memory: nothing to decode, no workers to recommend
    assert result["decode_images_per_s_per_worker"] is None and result["recommended_workers"] == 0
    assert result["input_bound"] is False and result["ddp"] is False


def test_bench_rejects_overrides_outside_bench_train(capsys):
    assert main(["bench", "model", "optim.lr=0.1"]) == 2
    assert "only bench train" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_on_the_cpu():
    """benchmarks/gpu_check.sh --smoke: synthetic shards, bench model, bench train (CPU and device
    decode) and a gloo DDP run under torchrun, at toy sizes; one JSON line, nothing failed."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--smoke"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = last_json(done.stdout)
    assert result["failed"] == []
    for key in ("end_to_end_cpu_decode_images_per_s", "end_to_end_device_decode_images_per_s",
                "end_to_end_ddp_nccl_one_gpu_images_per_s", "model_train_images_per_s", "model_inference_images_per_s",
                "model_train_tower_split_images_per_s"):
        assert result[key] > 0, key
    assert result["tower_split_vs_groups2"]["train"] > 0 and result["tower_split_vs_groups2"]["inference"] > 0
    assert result["recommended_workers"] >= 1 and result["targets"]["end_to_end_images_per_s"] == 20000
