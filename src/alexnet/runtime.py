"""Where and how a process runs: its place in a torchrun job, its device, autocast, threads, seeds,
memory, and the one start-up sequence of every command that runs a network from a run's config."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes of this job on this machine (they share its cores)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        """Human progress on stderr, from rank 0 only (the others would repeat it)."""
        if self.main:
            log(message)


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPUs); a lone process needs none."""
    world = env_int("WORLD_SIZE", "1")
    if world == 1:
        return Dist()
    local_rank, local_world = env_int("LOCAL_RANK", "0"), env_int("LOCAL_WORLD_SIZE", "1")
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, local_world)
    rank = env_int("RANK")
    on_gpu = device_name != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if on_gpu else "gloo", store=_attempt_store(rank, world), rank=rank,
                            world_size=world)
    return Dist(rank, world, local_rank, local_world)


def env_int(name: str, default: str | None = None) -> int:
    """A count or rank torchrun sets in the environment (``default`` where it may be left out), or a one-line
    refusal naming the variable: set by hand, it starts no process group."""
    text = os.environ.get(name, default)
    try:
        value = int(text) if text is not None else None
    except ValueError:
        value = None
    if value is None or value < (1 if name.endswith("SIZE") else 0):
        found = f"{name}={text!r} is not a number torchrun sets" if text is not None else \
            f"WORLD_SIZE is set but {name} is not"
        unset = " and ".join(dict.fromkeys((name, "WORLD_SIZE")))
        raise UsageError(f"{found}; start several processes with torchrun --nproc-per-node=N (docs/distributed.md), "
                         f"or unset {unset} for one process")
    return value


def _attempt_store(rank: int, world: int) -> dist.Store:
    """torchrun's key-value store, with a prefix per restart attempt.

    torchrun's agent store outlives a restart (``--max-restarts``), and the restarted processes
    would read the previous attempt's peer addresses from it: with gloo (torch 2.14) they fail to
    connect or hang. A prefix per attempt keeps each attempt's keys apart.
    """
    import datetime

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun hosts it; else rank 0 does
    store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), env_int("MASTER_PORT"), world,
                          is_master=rank == 0 and not agent, timeout=datetime.timedelta(minutes=10))
    return dist.PrefixStore(f"alexnet/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


@contextlib.contextmanager
def main_first(ddp: Dist):
    """Rank 0 runs the block first, the others after it (e.g. one process fills the data cache,
    the rest read it instead of decoding the same files again)."""
    if ddp.world > 1 and not ddp.main:
        dist.barrier()
    try:
        yield
    finally:  # also when rank 0's block fails: the others then meet the same failure, not a hang
        if ddp.world > 1 and ddp.main:
            dist.barrier()


def start(seed: int, threads: int, device_name: str) -> tuple[Dist, torch.device]:
    """What every command that runs a network from a run's config does first (train, eval, bench train):
    the thread count, the seeds, the torchrun process group, this process's device."""
    set_threads(threads)
    seed_everything(seed)
    ddp = init_distributed(device_name)
    return ddp, pick_device(device_name, ddp.local_rank)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers over all processes (no-op when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is the GPU when there is one (this process's GPU under torchrun), else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and local_rank:
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device {name!r} is not one torch knows; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps") or (device.type == "mps" and not torch.backends.mps.is_available()):
        raise UsageError(f"device {name!r} is not usable here (this PyTorch has no {device.type} support or sees no "
                         "such device); use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"train.device={name} but no CUDA GPU is visible; use train.device=cpu or auto")
    if shown := gpus_beyond(device):
        raise UsageError(f"device {name} but this machine shows {shown}: name one of them, or cpu")
    return device


def gpus_beyond(device: torch.device) -> str | None:
    """The GPUs this machine shows, in words, when ``device`` names an index beyond them; else None."""
    if device.type != "cuda" or (device.index or 0) < (count := torch.cuda.device_count()):
        return None
    return "one GPU, cuda:0" if count == 1 else f"{count} GPUs, cuda:0 .. cuda:{count - 1}"


def autocast(device: torch.device, precision: str):
    """Mixed precision on CPU and GPU alike; fp32 is the same call with autocast off."""
    if precision not in DTYPES:
        raise UsageError(f"train.precision must be one of {', '.join(DTYPES)}; got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


MAX_THREADS = 1024  # torch threads at most: far more than any machine's cores; OpenMP fails to start more


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of handing every large block back to the kernel.

    By default glibc serves each allocation over 32 MB (a 224-pixel batch's conv1 map, fc6's bf16
    weight copy and gradients) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so
    every training step page-faults hundreds of megabytes in again: on a 2-core CPU a fused ReLU over
    a 64x96x55x55 bf16 map took 19 ms that way and 3.6 ms with this setting, and the paper net's
    training step at 224 ran 1.12-1.25x faster (docs/performance.md). Memory then stays at its peak until the
    process ends, as with PyTorch's own GPU caching allocator. Linux/glibc only (elsewhere it does
    nothing); ``ALEXNET_MALLOC=0`` keeps the system default. Returns whether it was applied."""
    if os.environ.get("ALEXNET_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False


def configure_process() -> None:
    """The process-wide settings of an ``alexnet`` command, made once where it starts (``cli.main``),
    never by library code: glibc keeps freed memory (``keep_freed_memory``), inductor takes the CPU's
    vector extensions from its flags (``TORCHINDUCTOR_VEC_ISA_OK=1`` unless set: compiling and loading a
    test program for each of AMX, AVX-512 and AVX2 cost 9.6 s of the first LRN compile on a cold cache
    on a 2-core CPU, to learn what /proc/cpuinfo already says; a compiler that cannot build for a flagged
    extension makes the LRN fall back to its eager kernels, same numbers), and the C++ extension
    loader's "no CUDA runtime" notes are not printed."""
    keep_freed_memory()
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def usable_cpus() -> int:
    """The cores this process may run on: its affinity mask (a container's or Slurm's share), else
    every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def worker_count(requested: int | None = None, processes: int = 1, cap: int | None = None) -> int:
    """How many worker processes (or threads) to use: ``requested`` when it is given (>= 0), else the
    usable cores shared among ``processes`` processes of this job on the machine, at most ``cap``,
    at least 1. The one rule for decode workers, prepare workers and figure1's threads."""
    if requested is not None and requested >= 0:
        return requested
    count = max(1, usable_cpus() // max(1, processes))
    return min(count, cap) if cap else count


def git_commit() -> str:
    """The commit of the source tree this package runs from, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def log(message: str) -> None:
    """Human progress goes to stderr; stdout is kept for JSON results. Under torchrun use
    ``Dist.log``, which only rank 0 prints."""
    print(message, file=sys.stderr, flush=True)
