"""Micro-batching: concurrent requests share one forward pass, run off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


def stack(batches: list[np.ndarray]) -> np.ndarray:
    """One batch of several requests' images: uint8 pixels, or float32 in [0, 1] when mixed."""
    if len(batches) == 1:
        return batches[0]
    if all(b.dtype == np.uint8 for b in batches):
        return np.concatenate(batches)
    return np.concatenate(
        [b.astype(np.float32) / np.float32(255) if b.dtype == np.uint8 else b for b in batches]
    )


RunBatch = Callable[[np.ndarray, list[str]], list]
"""(images (B, S, S, 3), one client id per image) -> one result per image, in order."""


@dataclass
class _Job:
    images: np.ndarray
    client: str
    future: asyncio.Future


class MicroBatcher:
    """Collects jobs for up to `max_wait_ms` (or `max_size` images) and runs them as one batch.

    With `max_wait_ms == 0` every request runs alone (batching off). Either way the model runs
    on one worker thread, so the event loop keeps accepting requests meanwhile.
    """

    def __init__(self, run: RunBatch, max_size: int = 128, max_wait_ms: float = 2.0) -> None:
        self.run, self.max_size, self.max_wait = run, max_size, max_wait_ms / 1000
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return self.max_wait > 0

    async def start(self) -> None:
        if self.enabled:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, images: np.ndarray, client: str) -> list:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return await loop.run_in_executor(
                self.executor, self.run, images, [client] * len(images)
            )
        assert self._queue is not None
        job = _Job(images, client, loop.create_future())
        await self._queue.put(job)
        return await job.future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].images)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and self._queue.empty():
                    break
                try:
                    job = (
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                jobs.append(job)
                size += len(job.images)
            images = stack([j.images for j in jobs])
            clients = [j.client for j in jobs for _ in range(len(j.images))]
            try:
                results = await loop.run_in_executor(self.executor, self.run, images, clients)
            except Exception as exc:  # hand the failure to every waiting request
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(results[start : start + len(j.images)])
                start += len(j.images)
