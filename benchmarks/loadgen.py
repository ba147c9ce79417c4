"""A closed-loop HTTP load generator for the prediction API (the serve and attack benchmarks).

It speaks plain HTTP/1.1 over asyncio streams with keep-alive, one connection per worker: the
cheapest client there is, so what it measures is the service. (httpx's async pool costs about
1 ms per request and degrades with many connections; on a 2-core machine that would measure
the client.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from attacker.client import multipart_body
from attacker.inference_v2 import infer_body, read_metadata

Request = tuple[str, bytes, dict[str, str]]
"""(path, body, headers) of one POST."""


@dataclass
class LoadResult:
    images_per_s: float
    requests: int
    images: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    sent: int = 0
    """Every request answered, warm-up and edges included (the denominator of CPU costs)."""
    unanswered: int = 0
    """Requests still waiting for an answer `answer_timeout_s` after they were sent: each ends
    its worker (the service lost a request or hung), so the run finishes and says so."""


class _Connection:
    """One keep-alive HTTP/1.1 connection that posts bodies and reads whole responses."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n{self.extra}\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readuntil(b"\r\n")
        headers = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        if b"connection: close" in headers.lower():
            await self.close()
        return int(status_line.split()[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


def v1_requests(payloads: list[bytes], images_per_request: int) -> Callable[[int], Request]:
    """/v1/predict multipart requests of `images_per_request` encoded images from index i."""

    def make(i: int) -> Request:
        chosen = [payloads[(i + k) % len(payloads)] for k in range(images_per_request)]
        body, content_type = multipart_body(chosen)
        return "/v1/predict", body, {"Content-Type": content_type}

    return make


def v2_requests(
    images: np.ndarray, images_per_request: int, model: str = "victim", binary: bool = True
) -> Callable[[int], Request]:
    """/v2 infer requests: UINT8 NHWC tensors (binary extension by default), probabilities."""
    side = images.shape[1]
    metadata = {
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, side, side, 3]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1]}],
    }
    meta = read_metadata(model, metadata, images_per_request)

    def make(i: int) -> Request:
        rows = [(i + k) % len(images) for k in range(images_per_request)]
        body, headers = infer_body(meta, images[rows], binary)
        return f"/v2/models/{model}/infer", body, headers

    return make


async def generate_load(
    url: str,
    payloads: list[bytes] | None = None,
    *,
    concurrency: int,
    images_per_request: int,
    duration_s: float = 3.0,
    warmup_s: float = 0.5,
    headers: dict[str, str] | None = None,
    requests: Callable[[int], Request] | None = None,
    answer_timeout_s: float = 60.0,
) -> LoadResult:
    """`concurrency` workers each send requests of `images_per_request` images back to back.

    `requests(i)` builds the request starting at image i (default: /v1 multipart PNGs of
    `payloads`). The rate counts the requests answered within the window (after the warm-up,
    before the deadline), wherever they started: completions per second, as throughput is
    defined. Counting only requests that both start and finish inside it, as this did until
    2026-12-06, misses about one latency's worth of answers per worker at its edges: with
    200-ms answers in a 3-s window, 7% of the service's rate. One unanswered after
    `answer_timeout_s` is counted in `unanswered`.
    """
    if requests is None:
        assert payloads is not None, "give payloads or a request factory"
        requests = v1_requests(payloads, images_per_request)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    errors = 0
    images = 0
    sent = 0
    unanswered = 0
    loop_start = time.perf_counter()
    start, deadline = loop_start + warmup_s, loop_start + warmup_s + duration_s

    async def worker(w: int) -> None:
        nonlocal errors, images, sent, unanswered
        connection = _Connection(host, port, headers or {})
        i = w * images_per_request
        try:
            while time.perf_counter() < deadline:
                path, body, request_headers = requests(i)
                i += images_per_request * concurrency
                t0 = time.perf_counter()
                try:
                    status = await asyncio.wait_for(
                        connection.post(path, body, request_headers), answer_timeout_s
                    )
                except TimeoutError:
                    unanswered += 1
                    return
                t1 = time.perf_counter()
                sent += 1
                if start <= t1 <= deadline:
                    if status == 200:
                        latencies.append(t1 - t0)
                        images += images_per_request
                    else:
                        errors += 1
        finally:
            await connection.close()

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
        sent=sent,
        unanswered=unanswered,
    )
