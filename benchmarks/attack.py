"""Attack benchmark: the attacker's sustained images/s against the service's own capacity.

`python -m benchmarks.attack --json out.json` starts a local service (a CIFAR-sized cnn9 with
random weights: throughput does not depend on training) as a subprocess, then alternates two
measurements with the same batch size and concurrency: the service's capacity with the serve
benchmark's closed-loop load generator (pre-encoded images, no client work), and a full
`attacker query` run (pool generation, PNG encoding, hashing, SQLite writes included). The key
figure is `attacker_vs_service_capacity` = median attacker rate / median capacity (target >= 0.9).

The headline pool is `noise` (near-free to generate), so the figure measures the querying
machinery itself: HTTP, PNG encoding, hashing, scheduling, SQLite. `by_pool` adds `natural`,
whose synthesis (random crops of large photographs) costs about 1 ms of CPU per image: where the
attacker and the service share a few cores, that CPU is taken from the service, and the ratio
shows it. Timings on a shared machine are noisy: the medians of `--repeats` alternations count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from attacker.query import QueryConfig, run_query
from benchmarks.common import throwaway_victim
from benchmarks.loadgen import generate_load
from shared.datasets import load_dataset
from shared.imaging import encode_image
from victim_service.launch import service_process

TARGET = 0.9


def measure(args: argparse.Namespace, url: str, pool_name: str, tmp: Path) -> dict:
    """Alternate capacity and attacker runs `repeats` times on one pool; medians and samples."""
    pool = load_dataset(pool_name, size=512, image_size=32, seed=0)
    payloads = [encode_image(pool.image(i)) for i in range(len(pool))]
    capacity: list[float] = []
    attacker: list[float] = []
    for repeat in range(args.repeats):
        load = asyncio.run(
            generate_load(
                url, payloads, concurrency=args.concurrency,
                images_per_request=args.batch_size, duration_s=args.duration,
            )
        )  # fmt: skip
        capacity.append(load.images_per_s)
        budget = max(args.batch_size * args.concurrency, int(load.images_per_s * args.duration))
        config = QueryConfig(
            url=url, pool=pool_name, budget=budget, db=tmp / f"{pool_name}-{repeat}.sqlite",
            seed=repeat, concurrency=args.concurrency, batch_size=args.batch_size,
            pool_size=budget, pool_image_size=32, progress=False,
        )  # fmt: skip
        result = run_query(config)
        if not result.complete:
            raise SystemExit(f"attacker run {repeat} on {pool_name} did not complete")
        attacker.append(result.images_per_s)
        print(
            f"{pool_name} repeat {repeat}: service {load.images_per_s:.0f} img/s "
            f"(errors {load.errors}), attacker {result.images_per_s:.0f} img/s "
            f"({budget} images in {result.seconds:.2f} s)",
            file=sys.stderr,
        )
    service_rate, attacker_rate = statistics.median(capacity), statistics.median(attacker)
    return {
        "attacker_vs_service_capacity": attacker_rate / service_rate,
        "attacker_images_per_s": attacker_rate,
        "service_images_per_s": service_rate,
        "samples": {"service_images_per_s": capacity, "attacker_images_per_s": attacker},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="the service's device")
    parser.add_argument(
        "--pools", default="noise,natural",
        help="comma-separated pools; the headline figures are the first one's",
    )  # fmt: skip
    args = parser.parse_args(argv)
    pools = [p for p in args.pools.split(",") if p]

    with tempfile.TemporaryDirectory(prefix="attack-bench-") as tmp:
        checkpoint = throwaway_victim(Path(tmp) / "victim.pt")
        env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_DEVICE": args.device}
        with service_process(env) as (url, _process):
            by_pool = {name: measure(args, url, name, Path(tmp)) for name in pools}
    headline = by_pool[pools[0]]
    out = {
        "attacker_vs_service_capacity": headline["attacker_vs_service_capacity"],
        "attacker_images_per_s": headline["attacker_images_per_s"],
        "service_images_per_s": headline["service_images_per_s"],
        "pool": pools[0],
        "target": TARGET,
        "by_pool": by_pool,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "victim": "cnn9 random init, 32x32, 10 classes",
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
