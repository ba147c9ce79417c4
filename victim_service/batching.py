"""Micro-batching: concurrent requests share one forward pass, on model threads of their own.

Each model thread pulls jobs from a thread-safe queue and forms its next batch itself, so it
never waits for the event loop: while the loop parses requests and writes answers, the model
is already running the next batch (the earlier design formed batches on the event loop and
left the model idle whenever the loop was busy). Answers go back with `call_soon_threadsafe`.
On a CPU, several model threads with one intra-op thread each keep every core busy where one
forward pass with several intra-op threads stalls whenever the event loop takes a core.
A job may carry a function that decodes its images instead of the images: the model thread
that takes it decodes them, so decoding needs no thread hop of its own and never has more
threads than cores competing for them (a job whose decoding fails gets that error alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
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

Images = np.ndarray | Callable[[], np.ndarray]
"""A job's images, or a function that decodes them (run on a model thread)."""


class JobQueue(queue.Queue):
    """The model threads' job queue: `queue.Queue`, whose `get(timeout)` always times out.

    CPython's `queue.SimpleQueue.get(timeout)` (3.11, and the same loop in later sources)
    waits with no timeout at all when a `put` wakes it but another consumer takes the item
    first and its deadline has passed by the time it holds the GIL again: it recomputes a
    negative timeout, which its lock reads as "forever". With two model threads, one of them
    waiting out `max_wait_ms` in `_next_batch`, that left a thread asleep on the jobs it had
    collected until the next request came: the last clients of a burst were never answered
    (2 of 64 in a benchmark, seen with py-spy; very likely the 34 of 3,000 of a many-clients
    check). `tests/test_batching.py` replays it.
    """


class ServiceStopping(RuntimeError):
    """A job arrived after the batcher stopped: the service is shutting down."""


@dataclass
class _Job:
    images: Images
    count: int
    client: str
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def settle(self, result: list | None = None, error: BaseException | None = None) -> None:
        def set_it() -> None:
            if self.future.done():  # the request was cancelled meanwhile
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        # a closed event loop raises RuntimeError: nobody waits for this answer any more
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(set_it)


_STOP = None
"""The sentinel that tells the model thread to finish the jobs queued before it, then exit."""


class MicroBatcher:
    """Collects jobs for up to `max_wait_ms` (or `max_size` images) and runs them as one batch.

    With `max_wait_ms == 0` every request runs alone (batching off). Either way the model runs
    on `workers` threads of its own (`run` must be thread-safe then), so the event loop keeps
    accepting requests meanwhile. `stop()` drains: jobs submitted before it are answered
    (graceful shutdown), later ones get `ServiceStopping`.
    """

    def __init__(
        self, run: RunBatch, max_size: int = 128, max_wait_ms: float = 2.0, workers: int = 1
    ) -> None:
        self.run, self.max_size, self.max_wait = run, max_size, max_wait_ms / 1000
        self.workers = workers
        # not queue.SimpleQueue: its get(timeout) can wait forever (see JobQueue)
        self._jobs: queue.Queue[_Job | None] = JobQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    @property
    def enabled(self) -> bool:
        return self.max_wait > 0

    async def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._work, name=f"model-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Answer every job already queued, then end the model threads."""
        self._stopping = True
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []
        self._refuse_rest()

    async def submit(self, images: Images, client: str, count: int | None = None) -> list:
        """One result per image; `count` (how many images) is needed when `images` decodes."""
        if self._stopping:
            raise ServiceStopping("the service is shutting down")
        if count is None:
            if callable(images):
                raise TypeError("submit(decode, ...) needs the image count")
            count = len(images)
        loop = asyncio.get_running_loop()
        job = _Job(images, count, client, loop.create_future(), loop)
        self._jobs.put(job)
        return await job.future

    def _next_batch(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """`first` plus whatever fits before the deadline: (jobs, a job held over, stop seen)."""
        jobs, size = [first], first.count
        if not self.enabled:
            return jobs, None, False
        deadline = time.monotonic() + self.max_wait
        while size < self.max_size:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._jobs.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is _STOP:  # one sentinel per thread: this one is ours
                return jobs, None, True
            if size + job.count > self.max_size:
                return jobs, job, False
            jobs.append(job)
            size += job.count
        return jobs, None, False

    def _work(self) -> None:
        held: _Job | None = None
        while True:
            first = held or self._jobs.get()
            if first is _STOP:
                return
            jobs, held, stop = self._next_batch(first)
            self._run(jobs)
            if stop:
                if held is not None:
                    self._run([held])
                return

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if self._decode(j)]
        if not jobs:
            return
        images = stack([j.images for j in jobs])
        clients = [j.client for j in jobs for _ in range(j.count)]
        try:
            results = self.run(images, clients)
        except Exception as exc:  # hand the failure to every waiting request
            for j in jobs:
                j.settle(error=exc)
            return
        start = 0
        for j in jobs:
            j.settle(results[start : start + j.count])
            start += j.count

    @staticmethod
    def _decode(job: _Job) -> bool:
        """Decode the job's images if it carries a decoder; its failure settles that job alone."""
        if callable(job.images):
            try:
                job.images = job.images()
            except Exception as exc:
                job.settle(error=exc)
                return False
            if len(job.images) != job.count:
                job.settle(error=RuntimeError(f"decoded {len(job.images)} of {job.count} images"))
                return False
        return True

    def _refuse_rest(self) -> None:
        """Jobs that slipped in after the stop sentinels: refuse them rather than hang."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.settle(error=ServiceStopping("the service is shutting down"))
