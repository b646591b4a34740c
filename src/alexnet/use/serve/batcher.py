"""Requests that arrive together share a forward pass: one task gathers waiting images into batches
and runs them on the model's one thread."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..predictor import Predictor
from .metrics import Metrics


@dataclass
class Waiting:
    image: torch.Tensor  # uint8 (3, S, S)
    crops: int
    answer: asyncio.Future  # -> float (classes,) probabilities


class Batcher:
    """One task that gathers waiting images into batches and runs them on the model's one thread."""

    def __init__(self, predictor: Predictor, max_batch: int, max_wait_s: float, metrics: Metrics):
        self.predictor, self.max_batch, self.max_wait_s, self.metrics = predictor, max_batch, max_wait_s, metrics
        self.waiting: asyncio.Queue[Waiting] = asyncio.Queue()  # bounded by admission (ServeConfig.queue)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="alexnet-model")
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        """Warm the network up (the first forward pass sets up kernels: seconds), then take requests."""
        loop = asyncio.get_running_loop()
        side = self.predictor.pipeline.stored
        blank = torch.zeros(1, 3, side, side, dtype=torch.uint8)
        await loop.run_in_executor(self.model_thread, self.predictor.probabilities, blank, 1)
        self.task = loop.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.model_thread.shutdown(wait=True)

    async def on_model_thread(self, fn, *args):
        """``fn(*args)`` on the model's thread, between batches (a heat map: captum hooks the network while
        it runs, so nothing else may run the network meanwhile)."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def probabilities(self, image: torch.Tensor, crops: int) -> torch.Tensor:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.put_nowait(Waiting(image, crops, answer))
        return await answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.waiting.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self.waiting.empty() and loop.time() >= deadline:
                    break
                try:  # Queue.get takes its item only when it returns, so a timeout loses none
                    batch.append(await asyncio.wait_for(self.waiting.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            await self._forward(batch)

    async def _forward(self, batch: list[Waiting]) -> None:
        """One forward pass per ``crops`` value in ``batch``; each request gets its row or the error."""
        loop = asyncio.get_running_loop()
        for crops in sorted({w.crops for w in batch}):
            group = [w for w in batch if w.crops == crops and not w.answer.done()]  # done: client gone
            if not group:
                continue
            start = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.model_thread, self.predictor.probabilities,
                                                   torch.stack([w.image for w in group]), crops)
            except Exception as error:  # noqa: BLE001 - every waiting request gets it, the loop goes on
                for w in group:
                    if not w.answer.done():
                        w.answer.set_exception(error)
                continue
            self.metrics.forward.observe(time.perf_counter() - start)
            self.metrics.batch.observe(len(group))
            for w, row in zip(group, probs):
                if not w.answer.done():
                    w.answer.set_result(row)
