"""Data-path speed per core against the baselines run side by side (see alexnet.bench.data).

    python benchmarks/data.py [--src DIR] [--images N] [--seconds S]

Prints the JSON line of ``bench_data``; the goals are ratios measured in the same run:
``speedup_per_core_vs_torchvision`` >= 6 (JPEG shards) and ``prepare_speedup_vs_pil`` >= 1.5.
"""

import argparse
import sys
from pathlib import Path

from alexnet.bench.data import bench_data

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
GOALS = {"speedup_per_core_vs_torchvision": 6.0, "prepare_speedup_vs_pil": 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=SAMPLES, help=f"a folder of JPEGs (default {SAMPLES})")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    result = bench_data(args.src, json_out=True, min_images=args.images, seconds=args.seconds)
    for key, goal in GOALS.items():
        print(f"{key}: {result[key]:.2f} (goal >= {goal}: {'met' if result[key] >= goal else 'NOT met'})",
              file=sys.stderr)


if __name__ == "__main__":
    main()
