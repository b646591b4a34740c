"""Deployment rates against the model alone, measured in one run: predict, int8 and serve vs bench model.

On one machine, one after another: ``alexnet bench model --batch-size 64`` (the paper's network alone:
ours in PyTorch, and exported to ONNX in float32 and int8 in onnxruntime); ``alexnet predict`` end to
end over --copies x the sample photos (files decoded, preprocessed, run, printed) from the paper
network's checkpoint and from its int8 ONNX export (calibrated on 256 of the samples); and
``alexnet serve`` answering 16 concurrent clients (benchmarks/serve_load.py's load). Prints one JSON
line with each rate and its ratio to bench model's inference rate (the issue's aim: predict >= 0.5).
The network has random weights: the speed is the same as a trained one's.

    .venv/bin/python benchmarks/deploy.py [--copies 3] [--width 1.0] [--skip-bench] [--skip-serve] [--skip-int8]
                                          [--photos 900]
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx  # noqa: F401 - serve_load's client; fail here, not after minutes
from serve_load import address, cpu_name, launch, load, paper_checkpoint, stop, summary

SHARED = Path(os.environ.get("ALEXNET_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data")
ALEXNET = [sys.executable, "-m", "alexnet.cli"]


def last_json(command: list[str]) -> dict:
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed_predict(checkpoint: Path, photos: Path) -> float:
    """Images/s of ``alexnet predict`` over the folder, process start to exit."""
    count = sum(1 for _ in photos.iterdir())
    start = time.perf_counter()
    subprocess.run([*ALEXNET, "predict", "--checkpoint", str(checkpoint), str(photos), "--json"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(count / (time.perf_counter() - start), 1)


def photo_folder(folder: Path, samples: list[Path], copies: int) -> Path:
    photos = folder / "photos"
    photos.mkdir()
    for copy in range(copies):
        for path in samples:
            shutil.copy(path, photos / f"{copy}_{path.name}")
    return photos


def int8_export(folder: Path, checkpoint: Path, samples: list[Path]) -> tuple[Path, float]:
    """The checkpoint as int8 ONNX calibrated on 256 of the samples; its top-1 agreement on them."""
    calibration = folder / "calibration"
    calibration.mkdir()
    for path in samples[:256]:
        shutil.copy(path, calibration / path.name)
    int8 = folder / "paper-int8.onnx"
    exported = last_json([*ALEXNET, "export", "--checkpoint", str(checkpoint), "--format", "onnx", "--quantize",
                          "int8", "--calibration", str(calibration), "--out", str(int8)])
    return int8, exported["top1_agreement"]


def served(checkpoint: Path, samples: list[Path]) -> dict:
    """serve_load.py's load on one batched server: the faster of two rounds of 300 photos, 16 clients."""
    proc = launch(checkpoint, 2, "--max-batch", "32", "--max-wait-ms", "5")
    try:
        url, photos = address(proc), [p.read_bytes() for p in samples[:300]]
        return max((summary(*asyncio.run(load(url, photos, 16))) for _ in range(2)), key=lambda r: r["requests_per_s"])
    finally:
        stop([proc])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=3, help="times the sample photos are predicted (default 3)")
    parser.add_argument("--width", type=float, default=1.0, help="network width (default 1.0, the paper's)")
    parser.add_argument("--skip-bench", action="store_true", help="leave bench model out (a quick smoke run)")
    parser.add_argument("--skip-serve", action="store_true", help="leave serve out (serve_load.py times it)")
    parser.add_argument("--skip-int8", action="store_true", help="leave the int8 export out (a quick smoke run)")
    parser.add_argument("--photos", type=int, default=900, help="sample photos used (default: all 900)")
    args = parser.parse_args()
    samples = sorted((SHARED / "imagenet-samples").glob("*.JPEG"))[:args.photos]
    if len(samples) < 2:
        raise SystemExit(f"deploy: no sample photos under {SHARED / 'imagenet-samples'}; set ALEXNET_MIRROR")
    result = {"benchmark": "deploy", "cpu": cpu_name(), "width": args.width}
    if not args.skip_bench:
        model = last_json([*ALEXNET, "bench", "model", "--batch-size", "64", "--json", "--width", str(args.width)])
        result.update({k: v for k, v in model.items() if "inference" in k and k.endswith("_per_s")})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = paper_checkpoint(folder, args.width)
        photos = photo_folder(folder, samples, args.copies)
        result.update({"photos": sum(1 for _ in photos.iterdir()),
                       "predict_images_per_s": timed_predict(checkpoint, photos)})
        if not args.skip_int8:
            int8, agreement = int8_export(folder, checkpoint, samples)
            result.update({"predict_int8_onnx_images_per_s": timed_predict(int8, photos),
                           "int8_top1_agreement_on_calibration": agreement})
        if not args.skip_serve:
            result["serve_requests_per_s"] = served(checkpoint, samples)["requests_per_s"]
    if "inference_images_per_s" in result:
        base = result["inference_images_per_s"]
        for key in ("predict_images_per_s", "predict_int8_onnx_images_per_s", "serve_requests_per_s"):
            if key in result:
                result[key.replace("_per_s", "_vs_model")] = round(result[key] / base, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
