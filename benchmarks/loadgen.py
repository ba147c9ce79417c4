"""A closed-loop HTTP load generator for the prediction API (the serve and attack benchmarks)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import numpy as np

from attacker.client import multipart_body


@dataclass
class LoadResult:
    images_per_s: float
    requests: int
    images: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int


async def generate_load(
    url: str,
    payloads: list[bytes],
    *,
    concurrency: int,
    images_per_request: int,
    duration_s: float = 3.0,
    warmup_s: float = 0.5,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """`concurrency` workers each send requests of `images_per_request` PNGs back to back.

    Only requests that start after the warm-up and finish before the deadline are counted.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors = 0
    images = 0
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=60.0, headers=headers
    ) as client:
        loop_start = time.perf_counter()
        start, deadline = loop_start + warmup_s, loop_start + warmup_s + duration_s

        async def worker(w: int) -> None:
            nonlocal errors, images
            i = w * images_per_request
            while time.perf_counter() < deadline:
                images = [payloads[(i + k) % len(payloads)] for k in range(images_per_request)]
                body, content_type = multipart_body(images)
                i += images_per_request * concurrency
                t0 = time.perf_counter()
                response = await client.post(
                    "/v1/predict", content=body, headers={"content-type": content_type}
                )
                t1 = time.perf_counter()
                if t0 >= start and t1 <= deadline:
                    if response.status_code == 200:
                        latencies.append(t1 - t0)
                        images += images_per_request
                    else:
                        errors += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    lat = np.asarray(latencies) * 1000 if latencies else np.asarray([float("nan")])
    return LoadResult(
        images_per_s=images / duration_s,
        requests=len(latencies),
        images=images,
        seconds=duration_s,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        errors=errors,
    )
