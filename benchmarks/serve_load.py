"""`alexnet serve` under load: batched against one image per forward pass, side by side.

Starts `alexnet serve` twice on free loopback ports with the same checkpoint -- batched
(--max-batch 32, --max-wait-ms 5) and one at a time (--max-batch 1, --max-wait-ms 0) -- and sends
the same real photos (--samples: ../shared/data/imagenet-samples) from 16 concurrent clients (httpx
AsyncClient, multipart uploads as a browser sends them) to each in turn, --rounds times
(alternating, so load from elsewhere on the machine hits both). Prints one JSON line: requests/s,
p50/p99 latency of each one's fastest round and its mean batch, the gain (requests/s batched / one
at a time) and the gain of every round.
Without --checkpoint it writes one of the paper's network (1000 classes, random weights: the speed
is the same as trained ones); --width scales its layers' widths (default 1.0, the paper's; e.g. 0.25
for a quick smoke run, whose speeds are then not the paper network's). Both servers are stopped at
the end, also when the load fails.

    .venv/bin/python benchmarks/serve_load.py [--images 300] [--clients 16] [--threads 2] [--rounds 2] [--width 1.0]
                                              [--samples DIR]
"""

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from alexnet.data.pipeline import Pipeline
from alexnet.nn.model import AlexNet, ModelConfig
from alexnet.runs.checkpoint import save_checkpoint

SHARED = Path(os.environ.get("ALEXNET_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data")
SAMPLES = SHARED / "imagenet-samples"


def paper_checkpoint(folder: Path, width: float = 1.0) -> Path:
    classes = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(1000)]
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.zeros(3, 256, 256), mean_kind="image")
    return save_checkpoint(folder / "paper.pt", AlexNet(ModelConfig(width=width)).eval(), classes=classes,
                           pipeline=pipeline.state_dict())


def launch(checkpoint: Path, threads: int, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "alexnet.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0",
               "--threads", str(threads), *options]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


def address(proc: subprocess.Popen) -> str:
    """The URL a launched ``alexnet serve`` prints once it serves. Everything else it writes on stderr,
    before and after, is passed on to ours (a pipe nobody read would fill and stall the server)."""
    for line in proc.stderr:
        found = re.match(r"alexnet serve: (http://\S+)", line)
        if found:
            threading.Thread(target=lambda: [sys.stderr.write(rest) for rest in proc.stderr], daemon=True).start()
            return found.group(1)
        sys.stderr.write(line)
    raise SystemExit(f"alexnet serve did not start (exit status {proc.wait()}; its stderr is above)")


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate every server, then wait for each (killed if it has not ended within 30 s)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    pairs = zip(runs["batched"], runs["one_at_a_time"])
    gains = [round(b["requests_per_s"] / o["requests_per_s"], 2) for b, o in pairs]
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
    parser.add_argument("--width", type=float, default=1.0,
                        help="width of the network written without --checkpoint (default 1.0, the paper's)")
    parser.add_argument("--samples", type=Path, default=SAMPLES, help=f"the photos' folder (default {SAMPLES})")
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted(args.samples.glob("*.JPEG"))[: args.images]]
    if len(photos) < 2:
        raise SystemExit(f"serve_load: need at least 2 .JPEG photos in {args.samples}, found {len(photos)}")
    options = {"batched": ("--max-batch", str(args.max_batch), "--max-wait-ms", "5"),
               "one_at_a_time": ("--max-batch", "1", "--max-wait-ms", "0")}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or paper_checkpoint(Path(folder), args.width)
        procs = []  # both start at once; every one started is stopped, whatever fails
        try:
            for flags in options.values():
                procs.append(launch(checkpoint, args.threads, *flags))
            urls = {name: address(proc) for name, proc in zip(options, procs)}
            found = measure(urls, photos, args.clients, args.rounds)
        finally:
            stop(procs)
    default = "paper network, random weights" + ("" if args.width == 1.0 else f", width {args.width}")
    print(json.dumps({"benchmark": "serve_load", "cpu": cpu_name(), "threads": args.threads, "clients": args.clients,
                      "images": len(photos), "rounds": args.rounds,
                      "checkpoint": str(args.checkpoint or default), **found,
                      "batching_gain": round(found["batched"]["requests_per_s"]
                                             / found["one_at_a_time"]["requests_per_s"], 2)}))


if __name__ == "__main__":
    main()
