"""Seconds from asking for a service to its /readyz: a fresh process against a fork of the
preloaded server (what the experiments start for every row).

    python -m benchmarks.startup --json out.json [--repeats 7]

Each repeat starts and stops one of each, rotating which goes first; the figures are
medians, and `fresh_over_forked` is the median of the per-repeat ratios. The fork server's own
start (once per experiment process) is measured apart. All serve the same throwaway cnn9.

A third start is a fresh process that finds none of the venv's compiled bytecode (an empty
`PYTHONPYCACHEPREFIX`, written to by nobody): what every process paid where
`PYTHONDONTWRITEBYTECODE` is set and the venv was installed without `--compile-bytecode`
(`make venv` compiles it now); `bytecode_gain_fresh` is the median per-repeat ratio.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.common import machine, throwaway_victim, write_json
from shared.cli import friendly
from victim_service.launch import preloaded_service, service_process


def _seconds_to_ready(start) -> float:
    began = time.perf_counter()
    with start():
        ready = time.perf_counter() - began
    return ready


def main(
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
    repeats: Annotated[int, typer.Option(min=1)] = 7,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"VICTIM_CHECKPOINT": str(throwaway_victim(Path(tmp) / "v.pt"))}
        no_bytecode = {"PYTHONPYCACHEPREFIX": str(Path(tmp) / "empty-pycache"),
                       "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
        starts = {
            "fresh": lambda: service_process(env, ready_timeout=300),
            "forked": lambda: preloaded_service(env, ready_timeout=300),
            "fresh_without_bytecode": lambda: service_process(
                {**env, **no_bytecode}, ready_timeout=300
            ),
        }
        server_and_first_fork = _seconds_to_ready(starts["forked"])
        seconds: dict[str, list[float]] = {name: [] for name in starts}
        names = list(starts)
        for repeat in range(repeats):
            for name in names[repeat % 3 :] + names[: repeat % 3]:
                seconds[name].append(_seconds_to_ready(starts[name]))

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(seconds[a], seconds[b], strict=True))

    results = {
        "seconds_to_ready_median": {k: statistics.median(v) for k, v in seconds.items()},
        "seconds_to_ready": seconds,
        "fresh_over_forked": ratio("fresh", "forked"),
        "bytecode_gain_fresh": ratio("fresh_without_bytecode", "fresh"),
        "server_start_and_first_fork_s": server_and_first_fork,
        "repeats": repeats,
        **machine(),
    }
    write_json(json_out, results)


if __name__ == "__main__":
    typer.run(friendly(main))
