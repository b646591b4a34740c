"""The process pool that decodes images in parallel (CIFAR-10 decode, ImageNet prepare)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing

import torch


def make_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool; fork where available (spawned workers would each re-import torch)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)


def _init_worker() -> None:
    """One intra-op thread per worker: parallelism comes from the processes."""
    torch.set_num_threads(1)
