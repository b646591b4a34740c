"""The process pool that decodes images in parallel (CIFAR-10 decode, ImageNet prepare)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import signal
import sys

import torch


def make_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool; fork where available (spawned workers would each re-import torch)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)


def _init_worker() -> None:
    """One intra-op thread per worker: parallelism comes from the processes."""
    torch.set_num_threads(1)
    _die_with_parent()


def _die_with_parent() -> None:
    """On Linux, the worker is killed when the process that made the pool dies (kill -9, the OOM killer):
    forked workers share their queue's pipe, so none of them would ever read its end and they would wait
    forever, holding their memory, while the user re-runs the command."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # no prctl in this libc: the old behaviour
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
