"""Serving throughput: HTTP images/s against the same model's in-process batched forward pass.

    python -m benchmarks.serve --json out.json [--repeats 5] [--seconds 3]

Starts the service as separate processes on loopback (a 32x32 cnn9 victim): the default stack
(uvicorn with uvloop and httptools, orjson) with micro-batching on, the same with batching off,
and the plain stack (`UVICORN_LOOP=asyncio UVICORN_HTTP=h11`) to measure what uvloop and
httptools bring. Each repeat runs, one after the other, the in-process batched forward pass
(with the service's parallelism: as many threads as its model threads, the same torch threads,
the same malloc settings)
and 32-image requests at concurrency 16 on `/v1/predict` (multipart PNG) and on the v2 binary
tensor path (UINT8, no image decoding) and on the plain stack: the headline ratios are the
medians of the per-repeat ratios, so that every ratio compares runs taken seconds apart.
CPU seconds per request are read from /proc for the service and from getrusage for the load
generator. On a machine shared with other work the absolute figures move; the ratios less so.

The OOD filter's price is measured side by side: a third service runs the same victim with the
recommended filter (`VICTIM_OOD_DETECTOR`, a random-weight `defender:cnn5` of the shape
`benchmarks.ood` trains: throughput does not depend on the weights), and each repeat loads it
right after the unfiltered service with the same 32-image requests; `ood_filter_cost` is
1 - the median per-repeat ratio of the two (target: at most 25%), and the single-image,
concurrency-64 point is taken with and without the filter too.

The service's malloc settings (`victim_service/memory.py`: warm working memory) are measured
the same way: a fourth service runs with glibc's default thresholds (an operator's
`GLIBC_TUNABLES` turns the service's own settings off) and takes the v1 requests right after
the first; `working_memory_gain_v1` is the median per-repeat ratio of the two, and every point
records the service's minor page faults per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import orjson
import torch
import typer

from benchmarks.common import (
    machine,
    sample_images,
    sample_payloads,
    throwaway_filter,
    throwaway_victim,
    write_json,
)
from benchmarks.loadgen import generate_load, v1_requests, v2_requests
from shared.cli import friendly
from shared.device import bf16_supported
from shared.pipeline import Blackbox
from victim_service.app import load_blackbox, model_threads
from victim_service.launch import service_process
from victim_service.memory import tune_malloc
from victim_service.settings import VictimSettings

TARGETS = {
    "http_batch32_c16_vs_inprocess": 0.8,
    "single_c64_microbatch_vs_off": 3.0,
    "ood_filter_cost": 0.25,
}


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; NaN elsewhere)."""
    fields = _proc_stat(pid)
    if fields is None:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def page_faults(pid: int) -> float:
    """Minor page faults of a process so far (Linux /proc; NaN elsewhere)."""
    fields = _proc_stat(pid)
    return float("nan") if fields is None else float(fields[7])


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def inprocess_capacity(
    box: Blackbox, batch: int = 128, seconds: float = 3.0, threads: int = 1
) -> dict:
    """Images/s of the pipeline's batched forward pass (the machine's limit for this model),
    run by `threads` threads at once: the same parallelism as the service's model threads."""
    images = sample_images(batch, box.input_size)
    box.answer(images)
    done = [0] * threads
    cpu0, start = self_cpu_s(), time.perf_counter()

    def work(i: int) -> None:
        while time.perf_counter() - start < seconds:
            box.answer(images)
            done[i] += batch

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    elapsed, cpu = time.perf_counter() - start, self_cpu_s() - cpu0
    return {"images_per_s": sum(done) / elapsed, "cpu_us_per_image": cpu / sum(done) * 1e6,
            "threads": threads}  # fmt: skip


def load_point(url: str, pid: int, requests, per_request: int, concurrency: int, seconds: float):
    """One closed-loop load run, with the CPU each side spent per request."""
    service0, client0, faults0 = process_cpu_s(pid), self_cpu_s(), page_faults(pid)
    r = asyncio.run(
        generate_load(url, concurrency=concurrency, images_per_request=per_request,
                      duration_s=seconds, requests=requests)
    )  # fmt: skip
    sent = max(r.sent, 1)
    return {
        "images_per_s": r.images_per_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
        "errors": r.errors, "unanswered": r.unanswered,
        "service_cpu_us_per_request": (process_cpu_s(pid) - service0) / sent * 1e6,
        "loadgen_cpu_us_per_request": (self_cpu_s() - client0) / sent * 1e6,
        "service_page_faults_per_request": (page_faults(pid) - faults0) / sent,
    }  # fmt: skip


def encoder_us(repeats: int = 2000) -> dict:
    """Encoding one 32-image probabilities answer: the standard library vs orjson (µs)."""
    body = {"output": "probs", "predictions": [{"probabilities": [0.1] * 10}] * 32}
    out = {}
    for name, dumps in (("json", lambda b: json.dumps(b).encode()), ("orjson", orjson.dumps)):
        start = time.perf_counter()
        for _ in range(repeats):
            dumps(body)
        out[name] = (time.perf_counter() - start) / repeats * 1e6
    return out


def _median(samples: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def main(
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
    seconds: Annotated[float, typer.Option(min=0.1)] = 3.0,
    repeats: Annotated[int, typer.Option(min=1)] = 5,
    arch: Annotated[str, typer.Option(help="The victim's architecture")] = "cnn9",
    side: Annotated[int, typer.Option(help="Its input side in pixels (the images sent)")] = 32,
) -> None:
    tune_malloc()  # the service's allocator settings for the in-process reference too
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = throwaway_victim(Path(tmp) / "victim.pt", arch, side=side)
        payloads, images = sample_payloads(512, side), sample_images(512, side)
        # the service's own loading (channels-last weights, bf16 autocast where supported)
        box = load_blackbox(VictimSettings(checkpoint=checkpoint))
        # the service's parallelism: as many model threads, the same intra-op threads each
        threads = model_threads(VictimSettings(checkpoint=checkpoint), box.device)
        base = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_MAX_IMAGES": "64"}
        plain = {**base, "UVICORN_LOOP": "asyncio", "UVICORN_HTTP": "h11"}
        filtered = {**base, "VICTIM_OOD_DETECTOR": str(throwaway_filter(Path(tmp) / "ood.pt"))}
        # glibc's default thresholds (an operator's malloc setting turns the service's off)
        default_malloc = {**base, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
        shapes = {
            "v1": v1_requests(payloads, 32),
            "v2_binary": v2_requests(images, 32),
        }
        samples: dict[str, list[dict]] = {"inprocess": [], "v1": [], "v1_ood_filter": [],
                                          "v2_binary": [], "v1_plain_stack": [],
                                          "v1_glibc_default_malloc": []}  # fmt: skip
        with (
            service_process(base, ready_timeout=300) as (url, proc),
            service_process(plain, ready_timeout=300) as (plain_url, plain_p),
            service_process(filtered, ready_timeout=300) as (ood_url, ood_p),
            service_process(default_malloc, ready_timeout=300) as (glibc_url, glibc_p),
        ):
            for repeat in range(repeats):
                point = inprocess_capacity(box, seconds=seconds, threads=threads)
                samples["inprocess"].append(point)
                for name, make in shapes.items():
                    samples[name].append(load_point(url, proc.pid, make, 32, 16, seconds))
                    if name == "v1":  # the filter's price: the same requests, right after
                        samples["v1_ood_filter"].append(
                            load_point(ood_url, ood_p.pid, make, 32, 16, seconds)
                        )
                        samples["v1_glibc_default_malloc"].append(
                            load_point(glibc_url, glibc_p.pid, make, 32, 16, seconds)
                        )
                samples["v1_plain_stack"].append(
                    load_point(plain_url, plain_p.pid, shapes["v1"], 32, 16, seconds)
                )
                line = "  ".join(f"{k} {v[-1]['images_per_s']:.0f}" for k, v in samples.items())
                lost = sum(v[-1].get("unanswered", 0) for v in samples.values())
                print(
                    f"repeat {repeat}: {line} img/s"
                    + (f"  ({lost} requests never answered)" if lost else ""),
                    flush=True,
                )
            single = {
                "single_c1_microbatch": load_point(
                    url, proc.pid, v1_requests(payloads, 1), 1, 1, seconds
                ),
                "single_c64_microbatch": load_point(
                    url, proc.pid, v1_requests(payloads, 1), 1, 64, seconds
                ),
                "single_c64_microbatch_ood_filter": load_point(
                    ood_url, ood_p.pid, v1_requests(payloads, 1), 1, 64, seconds
                ),
            }
        off = {**base, "VICTIM_BATCH_MAX_WAIT_MS": "0"}
        with service_process(off, ready_timeout=300) as (url, proc):
            single["single_c64_off"] = load_point(
                url, proc.pid, v1_requests(payloads, 1), 1, 64, seconds
            )

    def ratios(name: str, reference: str = "inprocess") -> list[float]:
        """Per-repeat ratios; NaN where the reference completed nothing (1-s points, loaded)."""
        return [
            s["images_per_s"] / i["images_per_s"] if i["images_per_s"] > 0 else float("nan")
            for s, i in zip(samples[name], samples[reference], strict=True)
        ]

    inproc = samples["inprocess"]
    points = {
        name: {key: _median(values, key) for key in values[0]} for name, values in samples.items()
    }
    results = {
        "model": f"{arch} ({side}x{side}, 10 classes, random init)",
        "device": str(box.device),
        "gpu": torch.cuda.get_device_name(box.device) if box.device.type == "cuda" else None,
        "bf16": bf16_supported(box.device),
        "seconds_per_point": seconds,
        "repeats": repeats,
        "inprocess_images_per_s": _median(inproc, "images_per_s"),
        "http_batch32_c16_vs_inprocess": statistics.median(ratios("v1")),
        "v2_binary_batch32_c16_vs_inprocess": statistics.median(ratios("v2_binary")),
        "plain_stack_batch32_c16_vs_inprocess": statistics.median(ratios("v1_plain_stack")),
        "single_c64_microbatch_vs_off": single["single_c64_microbatch"]["images_per_s"]
        / max(single["single_c64_off"]["images_per_s"], 1e-9),
        "ood_filter_cost": 1 - statistics.median(ratios("v1_ood_filter", "v1")),
        "ood_filter_cost_single_c64": 1
        - single["single_c64_microbatch_ood_filter"]["images_per_s"]
        / max(single["single_c64_microbatch"]["images_per_s"], 1e-9),
        "working_memory_gain_v1": statistics.median(ratios("v1", "v1_glibc_default_malloc")),
        "ood_filter": "defender:cnn5 (fed 32 px, sees 16 px, 210 classes, random) + regression",
        "p99_ms_single_c1": single["single_c1_microbatch"]["p99_ms"],
        "cpu_us_per_request": {
            name: {
                "service": points[name]["service_cpu_us_per_request"],
                "loadgen": points[name]["loadgen_cpu_us_per_request"],
            }
            for name in (
                "v1",
                "v1_ood_filter",
                "v2_binary",
                "v1_plain_stack",
                "v1_glibc_default_malloc",
            )
        },
        "service_page_faults_per_request": {
            name: points[name]["service_page_faults_per_request"]
            for name in ("v1", "v2_binary", "v1_glibc_default_malloc")
        },
        "model_cpu_us_per_32_images": points["inprocess"]["cpu_us_per_image"] * 32,
        "json_encode_us_32_answers": encoder_us(),
        "points": points,
        "single_points": single,
        "samples": {
            "ratio_v1": ratios("v1"),
            "ratio_v2_binary": ratios("v2_binary"),
            "ratio_plain_stack": ratios("v1_plain_stack"),
            "ratio_ood_filter_vs_none": ratios("v1_ood_filter", "v1"),
            "ratio_v1_vs_glibc_default_malloc": ratios("v1", "v1_glibc_default_malloc"),
            **{f"{k}_images_per_s": [s["images_per_s"] for s in v] for k, v in samples.items()},
        },
        "targets": TARGETS,
        **machine(),
    }
    write_json(json_out, results)


if __name__ == "__main__":
    typer.run(friendly(main))
