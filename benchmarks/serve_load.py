"""`alexnet serve` under load: batched against one image per forward pass, side by side.

Starts `alexnet serve` twice on free loopback ports with the same checkpoint -- batched
(--max-batch 32, --max-wait-ms 5) and one at a time (--max-batch 1, --max-wait-ms 0) -- and sends
the same real photos (../shared/data/imagenet-samples) from 16 concurrent clients (httpx
AsyncClient, multipart uploads as a browser sends them) to each in turn, --rounds times
(alternating, so load from elsewhere on the machine hits both). Prints one JSON line: requests/s,
p50/p99 latency of each one's fastest round and its mean batch, the gain (requests/s batched / one
at a time) and the gain of every round.
Without --checkpoint it writes one of the paper's network (1000 classes, random weights: the speed
is the same as trained ones).

    .venv/bin/python benchmarks/serve_load.py [--images 300] [--clients 16] [--threads 2] [--rounds 2]
"""

import argparse
import asyncio
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from alexnet.runs.checkpoint import save_checkpoint
from alexnet.data.pipeline import Pipeline
from alexnet.nn.model import AlexNet, ModelConfig

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def paper_checkpoint(folder: Path) -> Path:
    classes = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(1000)]
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.zeros(3, 256, 256), mean_kind="image")
    return save_checkpoint(folder / "paper.pt", AlexNet(ModelConfig()).eval(), classes=classes,
                           pipeline=pipeline.state_dict())


def start(checkpoint: Path, threads: int, *options: str) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "alexnet.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0",
               "--threads", str(threads), *options]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    found = re.match(r"alexnet serve: (http://\S+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"alexnet serve did not start: {line!r}{proc.stderr.read()}")
    return proc, found.group(1)


async def load(url: str, photos: list[bytes], clients: int) -> tuple[float, list[float]]:
    """Send every photo once from ``clients`` concurrent clients; wall seconds and each request's latency."""
    todo = list(enumerate(photos))
    latencies = []

    async def client(http: httpx.AsyncClient):
        while todo:
            i, data = todo.pop()
            started = time.perf_counter()
            answer = await http.post(f"{url}/predict", files={"file": (f"{i}.JPEG", data, "image/jpeg")})
            answer.raise_for_status()
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        for data in photos[:clients]:  # warm-up: every kernel and connection once
            (await http.post(f"{url}/predict", files={"file": ("w.JPEG", data, "image/jpeg")})).raise_for_status()
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return time.perf_counter() - started, latencies


def mean_batch(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^alexnet_batch_size_sum (\S+)", text, re.M).group(1))
    count = float(re.search(r"^alexnet_batch_size_count (\S+)", text, re.M).group(1))
    return total / count


def summary(seconds: float, latencies: list[float]) -> dict:
    cuts = statistics.quantiles(latencies, n=100)
    return {"requests_per_s": round(len(latencies) / seconds, 2), "p50_ms": round(cuts[49] * 1e3, 1),
            "p99_ms": round(cuts[98] * 1e3, 1)}


def measure(servers: dict[str, str], photos: list[bytes], clients: int, rounds: int) -> dict[str, dict]:
    """Load each server in turn, ``rounds`` times (alternating, so a busy neighbour on the machine hits
    both); each one's fastest round, and the gain of every round."""
    runs = {name: [] for name in servers}
    for _ in range(rounds):
        for name, url in servers.items():
            runs[name].append(summary(*asyncio.run(load(url, photos, clients))))
    best = {name: max(found, key=lambda r: r["requests_per_s"]) for name, found in runs.items()}
    for name, url in servers.items():
        best[name]["mean_batch"] = round(mean_batch(url), 2)
    gains = [round(b["requests_per_s"] / o["requests_per_s"], 2) for b, o in zip(runs["batched"], runs["one_at_a_time"])]
    return {**best, "gain_per_round": gains}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="default: the paper's network with random weights")
    parser.add_argument("--images", type=int, default=300, help="photos sent to each server (default 300)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server (default 2)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server; the fastest counts")
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted(SAMPLES.glob("*.JPEG"))[: args.images]]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or paper_checkpoint(Path(folder))
        procs = {"batched": start(checkpoint, args.threads, "--max-batch", str(args.max_batch), "--max-wait-ms", "5"),
                 "one_at_a_time": start(checkpoint, args.threads, "--max-batch", "1", "--max-wait-ms", "0")}
        try:
            found = measure({name: url for name, (_, url) in procs.items()}, photos, args.clients, args.rounds)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(60)
    print(json.dumps({"benchmark": "serve_load", "cpu": cpu_name(), "threads": args.threads, "clients": args.clients,
                      "images": len(photos), "rounds": args.rounds,
                      "checkpoint": str(args.checkpoint or "paper network, random weights"), **found,
                      "batching_gain": round(found["batched"]["requests_per_s"]
                                             / found["one_at_a_time"]["requests_per_s"], 2)}))

if __name__ == "__main__":
    main()
