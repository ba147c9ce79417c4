"""Serving throughput: HTTP images/s against the same model's in-process batched forward pass.

    python -m benchmarks.serve --json out.json

Starts the service as a separate process on loopback (a 32x32 cnn9 victim), drives it with the
closed-loop load generator at concurrency 1, 16 and 64 with 1- and 32-image requests, micro-
batching on and off, and divides by the in-process capacity measured in the same run.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.common import sample_images, sample_payloads, throwaway_victim, write_json
from benchmarks.loadgen import generate_load
from shared.checkpoint import load_checkpoint
from shared.pipeline import Blackbox
from victim_service.launch import service_process


def inprocess_capacity(checkpoint: Path, batch: int = 128, seconds: float = 3.0) -> float:
    """Images/s of the pipeline's batched forward pass: the machine's limit for this model."""
    model, card = load_checkpoint(checkpoint)
    box = Blackbox(model, card.input_size, amp=True)
    images = sample_images(batch)
    box.answer(images)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        box.answer(images)
        done += batch
    return done / (time.perf_counter() - start)


def main(
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
    seconds: float = 3.0,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = throwaway_victim(Path(tmp) / "victim.pt")
        payloads = sample_payloads(512)
        results: dict = {"model": "cnn9 (32x32, 10 classes)", "seconds_per_point": seconds}
        results["inprocess_images_per_s"] = inprocess_capacity(checkpoint, seconds=seconds)
        points = {}
        for batching, wait_ms in (("microbatch", "2"), ("off", "0")):
            env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_BATCH_MAX_WAIT_MS": wait_ms,
                   "VICTIM_MAX_IMAGES": "64"}  # fmt: skip
            with service_process(env) as (url, _):
                for per_request in (1, 32):
                    for concurrency in (1, 16, 64):
                        r = asyncio.run(
                            generate_load(url, payloads, concurrency=concurrency,
                                          images_per_request=per_request, duration_s=seconds)
                        )  # fmt: skip
                        shape = "single" if per_request == 1 else "batch32"
                        key = f"{shape}_c{concurrency}_{batching}"
                        points[key] = {"images_per_s": r.images_per_s, "p50_ms": r.p50_ms,
                                       "p99_ms": r.p99_ms, "errors": r.errors}  # fmt: skip
                        print(f"{key:28s} {r.images_per_s:9.0f} img/s  p50 {r.p50_ms:7.1f} ms  "
                              f"p99 {r.p99_ms:7.1f} ms", flush=True)  # fmt: skip
        results["points"] = points
        inproc = results["inprocess_images_per_s"]
        results["http_batch32_c16_vs_inprocess"] = (
            points["batch32_c16_microbatch"]["images_per_s"] / inproc
        )
        results["single_c64_microbatch_vs_off"] = points["single_c64_microbatch"][
            "images_per_s"
        ] / max(points["single_c64_off"]["images_per_s"], 1e-9)
        results["p99_ms_single_c1"] = points["single_c1_microbatch"]["p99_ms"]
        results["targets"] = {"http_batch32_c16_vs_inprocess": 0.8,
                              "single_c64_microbatch_vs_off": 3.0}  # fmt: skip
        write_json(json_out, results)


if __name__ == "__main__":
    typer.run(main)
