"""`alexnet bench data` end to end on a few generated JPEGs: the JSON line and its keys (no speed
claims here; those live in benchmarks/data.py)."""

import json

import numpy as np
from PIL import Image

from alexnet.cli import main

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
