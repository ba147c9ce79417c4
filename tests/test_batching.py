"""The micro-batcher's job queue: its timed get must time out whatever the other model thread
does."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time

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
