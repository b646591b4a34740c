"""What the benchmarks share: progress lines, the device's and the CPU's names, device syncs."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def device_label(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sync(device: torch.device | None = None) -> None:
    """Wait for ``device``'s queued work (any initialised CUDA device's when None); nothing on a CPU."""
    if device is not None and device.type != "cuda":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)
