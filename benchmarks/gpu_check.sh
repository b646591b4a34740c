#!/usr/bin/env bash
# The GPU check: how fast this project trains and runs AlexNet on one GPU, as ratios against
# torchvision.models.alexnet() in eager fp32 on the same GPU, in at most 8 minutes, offline.
#
#   bash benchmarks/gpu_check.sh            # on a machine with one H100/H200 (torch + torchvision installed)
#   bash benchmarks/gpu_check.sh --smoke    # the same steps on the CPU at toy sizes (< 1 minute), exit 0
#
# Steps (each under its own time limit; a step that fails or runs out leaves nulls and the rest goes on):
#   0. tests         the CUDA tests (pytest -m cuda) with ALEXNET_REQUIRE_CUDA=1: on a GPU they must run, not skip
#   1. data          synthetic ImageNet-sized prepared shards in a temporary folder: 256x256 JPEG q90
#                    records (alexnet.data.imagenet.shards.encode / write_shard), 1000 classes, classes.tsv,
#                    manifests, stats.safetensors, prepared.json; 20,480 train + 1,000 val images
#   2. model         alexnet bench model: the paper net alone (eager, torch.compile, CUDA graphs) vs torchvision
#   3. train_cpu     alexnet bench train --recipe paper: end to end, JPEG decoded by CPU workers
#   4. train_device  the same with data.decode=device (nvJPEG)
#   5. ddp           the same as 3 under torchrun, DistributedDataParallel in a one-process NCCL group
# stdout: one JSON line with images/s of each, the ratio of each to torchvision's eager training rate
# (inference: to its inference rate), the targets and whether they are met; progress on stderr.
# Environment: PYTHON (default python), MODEL_BATCH (bench model's batch, default 256), KEEP=1 keeps
# the temporary folder and its logs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
WORK=$(mktemp -d -t alexnet-gpu-check-XXXXXX)
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

if [[ $SMOKE == 1 ]]; then  # CPU, toy sizes: a quarter-width net, 128 images, batch 8, 2 steps, gloo
  export ALEXNET_COMPILE=${ALEXNET_COMPILE:-0}  # LRN eager: compiling per shape costs seconds on a CPU
  TRAIN_IMAGES=128 VAL_IMAGES=16 CLASSES=10
  MODEL_ARGS=(--device cpu --batch-size 4 --steps 1 --rounds 1 --no-compile --no-onnx --width 0.25)
  TRAIN_ARGS=(--steps 2 --warmup 1 data.batch_size=8 data.workers=1 model.width=0.25 train.device=cpu)
  LIMIT_DATA=60 LIMIT_MODEL=60 LIMIT_TRAIN=60
else  # paper recipe as is: batch 128, bf16, channels_last, the paper's augmentation (crop, flip, PCA lighting)
  TRAIN_IMAGES=20480 VAL_IMAGES=1000 CLASSES=1000
  MODEL_ARGS=(--device cuda --batch-size "${MODEL_BATCH:-256}" --steps 20 --rounds 3 --compile)
  TRAIN_ARGS=(--steps 120 --warmup 20 train.device=cuda)  # 140 of the 160 steps of one epoch
  LIMIT_DATA=45 LIMIT_MODEL=170 LIMIT_TRAIN=85  # 470 s at most in all
fi
TRAIN_ARGS+=(--recipe paper --data "$WORK/data" --json train.progress=false)

step() {  # step NAME SECONDS COMMAND...: stdout into $WORK/NAME.json, stderr into $WORK/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "gpu_check: $name (at most ${limit}s) ..." >&2
  local t0=$SECONDS
  if timeout --kill-after 10 "$limit" "$@" >"$WORK/$name.json" 2>"$WORK/$name.log"; then
    echo "gpu_check: $name done in $((SECONDS - t0))s" >&2
  else
    echo "gpu_check: $name FAILED (exit $?) after $((SECONDS - t0))s; the end of its log:" >&2
    tail -n 15 "$WORK/$name.log" >&2
    echo "$name" >>"$WORK/failed"
  fi
}

if [[ $SMOKE == 0 ]]; then
  step tests 120 env ALEXNET_REQUIRE_CUDA=1 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
fi

step data "$LIMIT_DATA" "$PY" - "$WORK/data" "$TRAIN_IMAGES" "$VAL_IMAGES" "$CLASSES" <<'PY'
"""Synthetic prepared ImageNet: smooth random 256x256 images (JPEG q90, about the size of a photo's
record) in shards of 1024, and what load_dataset reads besides: classes, manifests, statistics."""
import json, os, sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from alexnet.data.imagenet.prepare import PREPARED_VERSION
from alexnet.data.imagenet.shards import SIZE, encode, write_shard

out, train, val, classes = Path(sys.argv[1]), *map(int, sys.argv[2:5])
SHARD = 1024


def images(first: int, count: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(first)
    low = torch.rand(count, 3, 8, 8, generator=g) * 255  # smooth colour fields plus grain
    x = F.interpolate(low, size=SIZE, mode="bicubic", align_corners=False) + 12 * torch.randn(count, 3, SIZE, SIZE, generator=g)
    return x.clamp(0, 255).to(torch.uint8)


def shard(job):
    split, number, first, count = job
    records, image, outer = [], np.zeros((3, SIZE, SIZE)), np.zeros((3, 3))
    for start in range(first, first + count, 128):  # 128 at a time: float copies stay small
        batch = images(start + (0 if split == "train" else 10**7), min(128, first + count - start))
        records += [encode(im, "jpeg", 90) for im in batch]
        pixels = batch.double()
        image += pixels.sum(0).numpy()
        outer += torch.einsum("nchw,ndhw->cd", pixels, pixels).numpy()
    labels = [(first + k) % classes for k in range(count)]
    write_shard(out / split / f"shard-{number:05d}.bin", records, labels, "jpeg")
    return split, labels, image, outer


jobs = [(s, k, first, min(SHARD, n - first)) for s, n in (("train", train), ("val", val))
        for k, first in enumerate(range(0, n, SHARD))]
for s in ("train", "val"):
    (out / s).mkdir(parents=True, exist_ok=True)
with Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
    done = pool.map(shard, jobs)
wnids = [f"n{c:08d}" for c in range(classes)]
for s in ("train", "val"):
    labels = [label for split, ls, *_ in done if split == s for label in ls]
    rows = ["index\tsource\tlabel\twnid"] + [f"{i}\tsynthetic/{i}.JPEG\t{y}\t{wnids[y]}" for i, y in enumerate(labels)]
    (out / s / "manifest.tsv").write_text("\n".join(rows) + "\n")
pixels = train * SIZE * SIZE
image = sum(d[2] for d in done if d[0] == "train") / train
rgb = image.sum(axis=(1, 2)) * SIZE * SIZE / pixels
covariance = sum(d[3] for d in done if d[0] == "train") / pixels - np.outer(rgb, rgb)
eigval, eigvec = np.linalg.eigh(covariance)
f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
save_file({"mean_image": f32(image), "rgb_mean": f32(rgb), "eigval": f32(eigval), "eigvec": f32(eigvec),
           "covariance": f32(covariance)}, str(out / "stats.safetensors"))
(out / "classes.tsv").write_text("index\twnid\tname\n" + "".join(f"{i}\t{w}\tclass {i}\n" for i, w in enumerate(wnids)))
(out / "prepared.json").write_text(json.dumps({"version": PREPARED_VERSION, "format": "jpeg", "quality": 90, "size": SIZE,
                                              "source": "synthetic", "counts": {"train": train, "val": val}, "classes": classes}))
print(json.dumps({"train": train, "val": val, "classes": classes,
                  "train_bytes": sum(p.stat().st_size for p in (out / "train").glob("*.bin"))}))
PY

step model "$LIMIT_MODEL" "$PY" -m alexnet.cli bench model --json "${MODEL_ARGS[@]}"
step train_cpu "$LIMIT_TRAIN" "$PY" -m alexnet.cli bench train "${TRAIN_ARGS[@]}" data.decode=cpu
step train_device "$LIMIT_TRAIN" "$PY" -m alexnet.cli bench train "${TRAIN_ARGS[@]}" data.decode=device
step ddp "$LIMIT_TRAIN" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
  -m alexnet.cli bench train "${TRAIN_ARGS[@]}" data.decode=cpu --ddp

"$PY" - "$WORK" "$SMOKE" "$((SECONDS - START))" <<'PY'
import json, sys
from pathlib import Path

work, smoke, seconds = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])


def read(name):
    lines = (work / f"{name}.json").read_text().strip().splitlines() if (work / f"{name}.json").exists() else []
    try:
        return json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}


model, cpu, device, ddp = (read(n) for n in ("model", "train_cpu", "train_device", "ddp"))
tv_train, tv_infer = model.get("torchvision_train_images_per_s"), model.get("torchvision_inference_images_per_s")
rates = {
    "end_to_end_cpu_decode": (cpu.get("images_per_s"), tv_train),
    "end_to_end_device_decode": (device.get("images_per_s"), tv_train),
    "end_to_end_ddp_nccl_one_gpu": (ddp.get("images_per_s"), tv_train),
    "model_train": (model.get("train_images_per_s"), tv_train),
    "model_train_eager": (model.get("train_eager_images_per_s"), tv_train),
    "model_train_compiled": (model.get("train_compiled_images_per_s"), tv_train),
    "model_inference": (model.get("inference_images_per_s"), tv_infer),
    "model_inference_eager": (model.get("inference_eager_images_per_s"), tv_infer),
    "model_inference_compiled": (model.get("inference_compiled_images_per_s"), tv_infer),
    "model_inference_cudagraphs": (model.get("inference_cudagraphs_images_per_s"), tv_infer),
    "model_train_tower_split": (model.get("train_tower_split_images_per_s"), tv_train),
    "model_inference_tower_split": (model.get("inference_tower_split_images_per_s"), tv_infer),
}
result = {"check": "smoke (cpu, toy sizes: not a measurement)" if smoke else "gpu", "device": model.get("device") or cpu.get("device")}
for name, (rate, base) in rates.items():
    result[f"{name}_images_per_s"] = rate
    result[f"{name}_vs_torchvision"] = round(rate / base, 2) if rate and base else None
targets = {"end_to_end_images_per_s": 20000, "model_alone_bf16_images_per_s": 50000}
best_e2e = max([r for r in (cpu.get("images_per_s"), device.get("images_per_s")) if r] or [0])
result.update({
    "torchvision_train_images_per_s": tv_train, "torchvision_inference_images_per_s": tv_infer,
    "targets": targets,
    "meets_targets": {"end_to_end": best_e2e >= targets["end_to_end_images_per_s"],
                      "model_alone_train": (model.get("train_images_per_s") or 0) >= targets["model_alone_bf16_images_per_s"],
                      "model_alone_inference": (model.get("inference_images_per_s") or 0) >= targets["model_alone_bf16_images_per_s"]},
    "input_bound": {"cpu_decode": cpu.get("input_bound"), "device_decode": device.get("input_bound")},
    "recommended_workers": cpu.get("recommended_workers"), "workers_used": cpu.get("workers"),
    "time_split_cpu_decode_s": {k: cpu.get(f"{k}_s") for k in ("data_wait", "to_device", "augment", "compute")},
    "time_split_device_decode_s": {k: device.get(f"{k}_s") for k in ("data_wait", "to_device", "augment", "compute")},
    "model_batch_size": model.get("batch_size"), "train_batch_size": cpu.get("batch_size"),
    "compile_s": model.get("compile_s"), "torch_version": model.get("torch_version"), "cpu": model.get("cpu"),
    "tower_split_vs_groups2": {kind: round(split / plain, 2) if split and plain else None for kind, split, plain in (
        ("train", model.get("train_tower_split_images_per_s"), model.get("train_eager_images_per_s")),
        ("inference", model.get("inference_tower_split_images_per_s"), model.get("inference_eager_images_per_s")))},
    "failed": (work / "failed").read_text().split() if (work / "failed").exists() else [], "seconds": seconds,
})
print(json.dumps(result), flush=True)
PY
[[ ! -s "$WORK/failed" ]]
