"""Many clients (issue 12, part 3): 100,000 distinct client addresses, memory stays bounded.

Each client is a real TCP connection from its own loopback source address (127.1.0.0 upward;
Linux routes all of 127.0.0.0/8 to lo), so the service sees 100,000 distinct peers exactly as it
would on the internet, through the rate limiter, PRADA and the per-client metric. The figures:
the service's resident memory before and after, its rate-limit buckets and metric series.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from attacker.client import multipart_body
from reliability.common import CheckResult, rss_mib, sample_png, service_process

FIRST = int(ipaddress.IPv4Address("127.1.0.0"))
ANSWER_TIMEOUT_S = 60.0
"""A client waiting longer than this counts as not answered (status -2 in the figures).

Where it was waiting is counted too (`unanswered_at`): "connect" (no TCP connection: SYNs or the
handshake dropped, e.g. a full accept queue), "answer" (connected and request sent, no status
line) or "close" (answered, connection never closed). With the service's in-flight gauge after
the run and its threads' stacks (below), a failure says where a request got stuck."""


def address(i: int) -> str:
    return str(ipaddress.IPv4Address(FIRST + i))


async def _one(
    host: str, port: int, source: str, body: bytes, content_type: str, stage: list[str]
) -> int:
    """One request on its own connection; `stage[0]` says what it waits for (see above)."""
    stage[0] = "connect"
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        stage[0] = "answer"
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
        writer.write(head.encode() + body)
        status = await reader.readuntil(b"\r\n")
        stage[0] = "close"
        await reader.read()
        return int(status.split()[1])
    finally:
        writer.close()


async def _clients(
    url: str, start: int, count: int, concurrency: int, stuck: dict[str, int]
) -> dict[int, int]:
    """Status -> clients; each not answered in time is counted in `stuck` by where it waited."""
    port = int(url.rsplit(":", 1)[1])
    _, png = sample_png()
    body, content_type = multipart_body([png])
    statuses: dict[int, int] = {}
    queue = iter(range(start, start + count))

    async def worker() -> None:
        for i in queue:
            stage = ["connect"]
            try:  # a service that stops answering fails the check instead of hanging it
                one = _one("127.0.0.1", port, address(i), body, content_type, stage)
                code = await asyncio.wait_for(one, ANSWER_TIMEOUT_S)
            except TimeoutError:  # also the kernel's connect timeout (ETIMEDOUT)
                code = -2
                stuck[stage[0]] = stuck.get(stage[0], 0) + 1
            except OSError:
                code = -1
            statuses[code] = statuses.get(code, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _series(metrics: str) -> int:
    return len(re.findall(r"^victim_client_images_total\{", metrics, re.MULTILINE))


def _gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def check_many_clients(
    checkpoint: Path,
    clients: int = 100_000,
    concurrency: int = 64,
    max_buckets: int = 10_000,
    max_labels: int = 100,
    max_growth_mib: float | None = 128,
    prada_clients: int = 1_000,
) -> CheckResult:
    """`clients` distinct clients, a fifth of them (at most 2 x `max_buckets`) as a warm-up that
    takes every per-client structure past its bound; then the answers, the bounds, and how much
    the resident memory grew after the warm-up.

    Part of that growth is the model's working memory, not per-client state: 64 clients at a
    time form batches of up to 64 images, and the largest batches come late (in process, the
    resident memory rises by about 340 MiB while batches of 1 to 64 images are first seen, then
    stays). With 500 buckets it rose from 737 to 868 MiB over the first 8,000 clients and then
    stayed at 868-872 MiB up to 14,000 (2026-12-06), so the quick run's smaller warm-up reports
    more growth (77-92 MiB) than the full run's (26 MiB)."""
    result = CheckResult("many-clients")
    env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_DEVICE": "cpu",
           "VICTIM_RATE_LIMIT": "0.01", "VICTIM_RATE_MAX_CLIENTS": str(max_buckets),
           "VICTIM_METRICS_MAX_CLIENTS": str(max_labels), "VICTIM_PRADA_THRESHOLD": "0.9",
           "VICTIM_PRADA_ACTION": "shuffle",
           "VICTIM_PRADA_MAX_CLIENTS": str(prada_clients)}  # fmt: skip
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack (see below)
    statuses: dict[int, int] = {}
    stuck: dict[str, int] = {}
    started = time.monotonic()
    with service_process(env) as (url, process):
        warm = min(max_buckets * 2, clients // 5)
        for code, n in asyncio.run(_clients(url, 0, warm, concurrency, stuck)).items():
            statuses[code] = statuses.get(code, 0) + n
        rss_warm = rss_mib(process.pid)  # every structure at its bound already
        for code, n in asyncio.run(_clients(url, warm, clients - warm, concurrency, stuck)).items():
            statuses[code] = statuses.get(code, 0) + n
        rss_end = rss_mib(process.pid)
        metrics = httpx.get(f"{url}/metrics").text
        if stuck:  # where the service's threads are now goes to its stderr (the test's output)
            os.kill(process.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
    buckets = _gauge(metrics, "victim_rate_limit_clients")
    series = _series(metrics)
    in_flight = _gauge(metrics, "victim_requests_in_flight")
    answered = statuses.get(200, 0)
    result.expect(
        answered == clients,
        f"{clients - answered} clients not answered: {statuses}, waiting at {stuck}; "
        f"{in_flight:.0f} requests still in flight in the service",
    )
    result.expect(buckets <= max_buckets, f"{buckets:.0f} rate-limit buckets kept")
    result.expect(series <= max_labels + 1, f"{series} per-client metric series")
    growth = rss_end - rss_warm
    if max_growth_mib is not None:
        result.expect(
            growth < max_growth_mib, f"resident memory grew {growth:.0f} MiB after warm-up"
        )
    result.figures = {
        "clients": clients, "answered": answered, "buckets": int(buckets),
        "metric_series": series, "rss_after_warm_mib": round(rss_warm),
        "rss_end_mib": round(rss_end), "seconds": round(time.monotonic() - started),
        "in_flight_at_end": int(in_flight),
    }  # fmt: skip
    result.details = {"unanswered_at": stuck}
    return result
