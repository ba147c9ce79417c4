"""Load (issue 12, part 2): 60 s at concurrency 128, micro-batching and every defense on.

The OOD filter is trained here on embedded data (digits in, `natural` out, the victim's own
features), so the check needs no dataset archive. Defense actions are `shuffle`, so every query
must come back 200: any other status or a dropped connection counts as an error.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import sample_payloads
from benchmarks.loadgen import generate_load
from reliability.common import CheckResult, rss_mib, service_process


def train_small_ood(checkpoint: Path, out: Path) -> Path:
    from defense.ood import train_ood

    train_ood("digits", "natural", f"victim:{checkpoint}", out, out_size=400, folds=3,
              target_tnr=0.95, progress=False)  # fmt: skip
    return out


def check_load(
    checkpoint: Path, workdir: Path, seconds: float = 60.0, concurrency: int = 128
) -> CheckResult:
    result = CheckResult("load")
    ood = train_small_ood(checkpoint, workdir / "ood.pt")
    env = {
        "VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_DEVICE": "cpu",
        "VICTIM_BATCH_MAX_WAIT_MS": "2", "VICTIM_BATCH_MAX_SIZE": "128",
        "VICTIM_OOD_DETECTOR": str(ood), "VICTIM_OOD_ACTION": "shuffle",
        "VICTIM_PRADA_THRESHOLD": "0.9", "VICTIM_PRADA_ACTION": "shuffle",
        "VICTIM_REVERSE_SIGMOID_BETA": "0.7", "VICTIM_REVERSE_SIGMOID_GAMMA": "0.4",
    }  # fmt: skip
    payloads = sample_payloads(512)
    with service_process(env) as (url, process):
        rss_start = rss_mib(process.pid)
        peak = [rss_start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                peak[0] = max(peak[0], rss_mib(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            load = asyncio.run(
                generate_load(
                    url,
                    payloads,
                    concurrency=concurrency,
                    images_per_request=1,
                    duration_s=seconds,
                    warmup_s=2.0,
                )  # fmt: skip
            )
        except (OSError, asyncio.IncompleteReadError) as exc:
            result.fail(f"the load generator lost a connection: {exc!r}")
            return result
        finally:
            stop.set()
            sampler.join()
        rss_end = rss_mib(process.pid)
        metrics = httpx.get(f"{url}/metrics").text
    result.expect(load.errors == 0, f"{load.errors} requests answered with an error")
    result.expect(load.unanswered == 0, f"{load.unanswered} requests never answered")
    result.expect(load.requests > 0, "no request was answered in the window")
    result.expect("victim_flagged_queries_total" in metrics, "no defense flagged anything")
    result.figures = {
        "seconds": round(time.monotonic() - started), "concurrency": concurrency,
        "requests": load.requests, "errors": load.errors,
        "unanswered": load.unanswered, "req_per_s": round(load.images_per_s),
        "p50_ms": round(load.p50_ms, 1), "p99_ms": round(load.p99_ms, 1),
        "rss_start_mib": round(rss_start), "rss_end_mib": round(rss_end),
        "rss_peak_mib": round(peak[0]),
    }  # fmt: skip
    return result
