"""Seconds from asking for a service to its /readyz: a fresh process against a fork of the
preloaded server (what the experiments start for every row).

    python -m benchmarks.startup --json out.json [--repeats 7]

Each repeat starts and stops one of each, alternating which goes first; the figures are
medians, and `fresh_over_forked` is the median of the per-repeat ratios. The fork server's own
start (once per experiment process) is measured apart. Both serve the same throwaway cnn9.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.common import machine, throwaway_victim, write_json
from victim_service.launch import preloaded_service, service_process


def _seconds_to_ready(start) -> float:
    began = time.perf_counter()
    with start():
        ready = time.perf_counter() - began
    return ready


def main(json_out: Annotated[Path | None, typer.Option("--json")] = None, repeats: int = 7) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"VICTIM_CHECKPOINT": str(throwaway_victim(Path(tmp) / "v.pt"))}
        starts = {
            "fresh": lambda: service_process(env, ready_timeout=300),
            "forked": lambda: preloaded_service(env, ready_timeout=300),
        }
        server_and_first_fork = _seconds_to_ready(starts["forked"])
        seconds: dict[str, list[float]] = {"fresh": [], "forked": []}
        for repeat in range(repeats):
            order = ["fresh", "forked"] if repeat % 2 == 0 else ["forked", "fresh"]
            for name in order:
                seconds[name].append(_seconds_to_ready(starts[name]))
    ratios = [f / k for f, k in zip(seconds["fresh"], seconds["forked"], strict=True)]
    results = {
        "seconds_to_ready_median": {k: statistics.median(v) for k, v in seconds.items()},
        "seconds_to_ready": seconds,
        "fresh_over_forked": statistics.median(ratios),
        "server_start_and_first_fork_s": server_and_first_fork,
        "repeats": repeats,
        **machine(),
    }
    write_json(json_out, results)


if __name__ == "__main__":
    typer.run(main)
