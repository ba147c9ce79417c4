"""The service's malloc settings: a forward pass's working memory stays mapped between batches.

Real services on loopback; the page faults are the kernel's count for the service process.
"""

from __future__ import annotations

import asyncio
import platform
import sys
from pathlib import Path

import pytest

from benchmarks.common import sample_images, throwaway_victim
from benchmarks.loadgen import generate_load, v2_requests
from benchmarks.serve import page_faults
from victim_service.launch import service_process
from victim_service.memory import operator_set_malloc, tune_malloc

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt and /proc page-fault counts are Linux glibc's",
)


def steady_faults_per_request(url: str, pid: int, images, windows: int = 10) -> float:
    """Minor page faults per 32-image request, one at a time (so every batch has one shape),
    once the service's memory has grown to its working set: the fewest of up to `windows`
    half-second windows (the first batches touch new pages legitimately)."""
    fewest = float("inf")
    for _ in range(windows):
        before = page_faults(pid)
        result = asyncio.run(
            generate_load(url, concurrency=1, images_per_request=32, duration_s=0.5,
                          requests=v2_requests(images, 32))
        )  # fmt: skip
        assert result.errors == 0
        fewest = min(fewest, (page_faults(pid) - before) / max(result.sent, 1))
        if fewest < 10:
            break
    return fewest


@glibc_only
def test_working_memory_stays_mapped_between_batches(tmp_path: Path):
    """glibc's defaults hand a batch's big blocks back to the kernel and fault every page in
    again for the next one: 1,140-1,350 faults per request measured here with
    `GLIBC_TUNABLES=glibc.malloc.arena_max=2` (which turns the service's settings off), 0 in
    most windows with them. `benchmarks.serve` measures the pair side by side."""
    checkpoint = throwaway_victim(tmp_path / "victim.pt", "cnn9", side=32)
    env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_MAX_IMAGES": "64"}
    with service_process(env, ready_timeout=300) as (url, process):
        faults = steady_faults_per_request(url, process.pid, sample_images(256, 32))
    assert faults < 100


def test_an_operators_malloc_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch):
    assert operator_set_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert operator_set_malloc({"MALLOC_ARENA_MAX": "4"})
    assert operator_set_malloc({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert not operator_set_malloc({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    assert not operator_set_malloc({"PATH": "/usr/bin"})
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert tune_malloc() is False  # and this process's malloc is left as it was
