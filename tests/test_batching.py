"""The micro-batcher's job queue and decoders.

Its queue's timed get must time out whatever the other model thread does; a job may carry a
decoder, which the model thread runs, and a failed decode fails that job alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
import time

import numpy as np
import pytest

from victim_service.batching import JobQueue, MicroBatcher


def stolen_wakeup(jobs: queue.Queue) -> bool:
    """True when a `get(timeout=0.3)` came back (with Empty) by 3 s after this sequence: a
    `put` wakes the waiting consumer, another consumer takes the job while the first waits for
    the GIL, and the GIL is held past the first one's deadline (what two model threads do)."""
    returned = threading.Event()

    def consumer() -> None:
        with contextlib.suppress(queue.Empty):
            jobs.get(timeout=0.3)
        returned.set()

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    time.sleep(0.1)  # the consumer now waits on the queue, the GIL released
    interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)  # keep the GIL on this thread until it sleeps
    try:
        jobs.put("job")  # wakes the consumer, which needs the GIL to look ...
        jobs.get_nowait()  # ... while the other model thread takes the job
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # past the consumer's deadline, GIL held
            pass
    finally:
        sys.setswitchinterval(interval)
    came_back = returned.wait(3)
    jobs.put("wake")  # frees a consumer left waiting, so the thread ends
    thread.join(5)
    return came_back


def test_a_timed_get_times_out_when_another_thread_takes_the_job():
    """Regression: the batcher used queue.SimpleQueue, whose get(timeout) then waits with no
    timeout (CPython 3.11), and a model thread slept on the jobs it held: clients hung."""
    assert stolen_wakeup(JobQueue())
    assert isinstance(MicroBatcher(lambda images, clients: [])._jobs, JobQueue)


def test_decoders_run_on_the_model_thread_and_fail_their_own_job_only():
    decoded_on: list[str] = []
    batches: list[int] = []

    def decoder(value: int, count: int):
        def decode() -> np.ndarray:
            decoded_on.append(threading.current_thread().name)
            return np.full((count, 2, 2, 3), value, np.uint8)

        return decode

    def broken() -> np.ndarray:
        raise ValueError("not an image")

    def run(images: np.ndarray, clients: list[str]) -> list:
        batches.append(len(images))
        return [(int(x[0, 0, 0]), c) for x, c in zip(images, clients, strict=True)]

    async def scenario() -> list:
        batcher = MicroBatcher(run, max_size=8, max_wait_ms=200)
        jobs = [
            batcher.submit(decoder(1, 2), "a", count=2),
            batcher.submit(broken, "b", count=1),
            batcher.submit(np.full((1, 2, 2, 3), 3, np.uint8), "c"),
            batcher.submit(decoder(4, 1), "d", count=1),
        ]
        tasks = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(0.01)  # all four queued before the model thread takes any
        await batcher.start()
        answers = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await batcher.stop()
        return answers

    first, failed, plain, last = asyncio.run(scenario())
    assert first == [(1, "a"), (1, "a")]
    assert isinstance(failed, ValueError) and str(failed) == "not an image"
    assert plain == [(3, "c")]
    assert last == [(4, "d")]
    assert batches == [4]  # one forward pass for the three good jobs' four images
    assert decoded_on == ["model-0", "model-0"]


def test_a_decoder_without_its_image_count_is_refused():
    async def scenario() -> None:
        batcher = MicroBatcher(lambda images, clients: [0] * len(images))
        await batcher.submit(lambda: np.zeros((1, 2, 2, 3), np.uint8), "c")

    with pytest.raises(TypeError, match="image count"):
        asyncio.run(scenario())


def test_a_decoder_that_returns_the_wrong_count_fails_its_job():
    async def scenario() -> list:
        batcher = MicroBatcher(lambda images, clients: [0] * len(images), max_wait_ms=0)
        await batcher.start()
        try:
            return await batcher.submit(lambda: np.zeros((2, 2, 2, 3), np.uint8), "c", count=3)
        finally:
            await batcher.stop()

    with pytest.raises(RuntimeError, match="decoded 2 of 3 images"):
        asyncio.run(scenario())
