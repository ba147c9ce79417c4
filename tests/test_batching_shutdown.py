"""Shutdown drains the micro-batcher: requests queued when the lifespan ends still get answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from victim_service.batching import MicroBatcher


def test_stop_answers_every_job_already_submitted():
    """Regression: `stop()` cancelled the worker and the executor's futures, so jobs queued
    behind a running batch at shutdown were lost (their requests answered 500, or never)."""
    release = threading.Event()

    def run(images: np.ndarray, clients: list[str]) -> list:
        release.wait(5)  # the first batch is still running when stop() is called
        return [int(x[0, 0, 0]) for x in images]

    async def scenario() -> list:
        batcher = MicroBatcher(run, max_size=1, max_wait_ms=1)
        await batcher.start()
        jobs = [
            asyncio.create_task(batcher.submit(np.full((1, 2, 2, 3), i, np.uint8), "c"))
            for i in range(5)
        ]
        await asyncio.sleep(0.05)  # all five queued, the first one running
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(stopping, 10)
        return await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 10)

    assert asyncio.run(scenario()) == [[0], [1], [2], [3], [4]]


def test_stop_without_batching_waits_for_the_running_job():
    async def scenario() -> list:
        batcher = MicroBatcher(lambda images, clients: [len(images)], max_wait_ms=0)
        await batcher.start()
        job = asyncio.create_task(batcher.submit(np.zeros((3, 2, 2, 3), np.uint8), "c"))
        await asyncio.sleep(0)
        await batcher.stop()
        return await job

    assert asyncio.run(scenario()) == [3]


def test_malloc_arenas_are_bounded_where_glibc_runs():
    """Regression (many-clients: resident memory grew by hundreds of MiB over 100,000 clients
    with every per-client structure at its bound): glibc must take the arena limit."""
    import platform

    from victim_service.memory import limit_malloc_arenas

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt's arena limit is glibc's")
    assert limit_malloc_arenas(2)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_model_threads_follow_the_cpus_the_service_may_use():
    """A service pinned to one core (taskset, a cpuset container) runs one forward pass with one
    intra-op thread: `os.cpu_count()` counts the machine's cores, which would start one
    single-threaded pass per core, all fighting over the one they may use."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import torch; "
        "from victim_service.app import model_threads; from victim_service.settings import "
        "VictimSettings; print(model_threads(VictimSettings(), torch.device('cpu')), "
        "torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_a_request_after_the_batcher_drained_gets_503_on_both_protocols(tmp_path):
    """Through the real service: once the lifespan's shutdown has drained the micro-batcher, a
    request that still reaches it is refused with 503 `not_ready` (not a 500, not a hang)."""
    import httpx

    from benchmarks.common import throwaway_victim
    from shared.imaging import encode_image
    from tests.servers import running_service
    from victim_service.app import create_app
    from victim_service.settings import VictimSettings

    settings = VictimSettings(
        checkpoint=throwaway_victim(tmp_path / "v.pt", arch="cnn5"), device="cpu", amp=False
    )
    app = create_app(settings)
    png = encode_image(np.zeros((32, 32, 3), dtype=np.uint8))
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}

    def ask(client: httpx.Client) -> tuple[httpx.Response, httpx.Response]:
        v1 = client.post("/v1/predict", files=[("images", ("a.png", png, "image/png"))])
        v2 = client.post("/v2/models/victim/infer", json={"inputs": [tensor]})
        return v1, v2

    with running_service(settings, app=app) as url, httpx.Client(base_url=url) as client:
        assert [r.status_code for r in ask(client)] == [200, 200]
        asyncio.run(app.state.batcher.stop())  # what the lifespan's shutdown runs
        v1, v2 = ask(client)
    assert v1.status_code == 503 and v1.json()["error"]["kind"] == "not_ready"
    assert v1.json()["error"]["message"] == "the service is shutting down"
    assert v2.status_code == 503 and v2.json()["kind"] == "not_ready"
    assert v2.json()["error"] == "the service is shutting down"
