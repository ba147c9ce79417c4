"""Attack benchmark: the attacker's sustained images/s against the service's own capacity.

`python -m benchmarks.attack --json out.json` starts a local service (a CIFAR-sized cnn9 with
random weights: throughput does not depend on training) as a subprocess, then alternates two
measurements with the same batch size and concurrency: the service's capacity with the serve
benchmark's closed-loop load generator (pre-encoded images, no client work), and a full
`attacker query` run (pool generation, PNG encoding, hashing, SQLite writes included). The key
figure is `attacker_vs_service_capacity` = median attacker rate / median capacity (target >= 0.9).

Both protocols are measured (`--protocols v1,v2`): v1 sends multipart PNGs, v2 raw UINT8
tensors through the binary extension (no PNG encoding on the attacker's side, no decoding on the
service's), each against the capacity measured with the same protocol and request shape. The
requests carry 32 images (the API allows 64), where 8 was the earlier default: per-request
costs (HTTP, scheduling) are shared by four times as many images. CPU per request is read from
getrusage for the attacker (and the load generator) and from /proc for the service.

The headline pool is `noise` (25 us of CPU per image), so the figure measures the querying
machinery itself: HTTP, PNG encoding, hashing, scheduling, SQLite. `by_pool` adds `natural`,
whose synthesis (random crops of large photographs) costs about 1 ms of CPU per image: where the
attacker and the service share a few cores, that CPU is taken from the service, and the ratio
shows it. Each run of `natural` starts with no image made, on disk or in memory. `natural@kept`
is the same pool as an attacker holds it after a first run, or as photographs on disk: its
images were made before the run (untimed, `fill_s`) and kept on disk (`shared.datasets.slots`),
so the run reads them back. Timings on a shared machine are noisy: the medians of `--repeats`
alternations count.

Two CPU layouts (`--cores`): `shared` puts the clients and the service on all the cores, as on
one machine, where every microsecond the attacker spends is taken from the service, so the
ratio measures their sum; `split` pins the service to one half of the CPUs and the clients (the
load generator and the attacker alike) to the other, as an attacker's and an owner's machines
are in practice: the ratio says whether the attacker keeps up with the service. The headline
keys are the first layout's; `by_cores` has both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from attacker.query import QueryConfig, run_query
from attacker.runs import load_pool_of
from benchmarks.common import machine, pinned, split_cpus, throwaway_victim
from benchmarks.loadgen import generate_load, v1_requests, v2_requests
from benchmarks.serve import process_cpu_s, self_cpu_s
from shared.cli import friendly
from shared.datasets import check_dataset, load_dataset
from shared.datasets.generated import NATURAL_CACHE
from shared.imaging import encode_image, resize
from victim_service.launch import service_process

TARGET = 0.9


def measure(
    args: argparse.Namespace, url: str, pid: int, pool_name: str, protocol: str, tmp: Path
) -> dict:
    """Alternate capacity and attacker runs `repeats` times; medians of rates and ratios."""
    dataset, kept = pool_spec(pool_name)
    # the images as the attacker sends them: at the victim's input size (a folder pool's
    # 64-px photographs would cost the service a larger decode and a resize)
    pool = load_dataset(dataset, size=512, image_size=32, seed=0)
    images = np.stack([resize(pool.image(i), 32) for i in range(min(len(pool), 512))])
    if protocol == "v2":
        requests = v2_requests(images, args.batch_size)
    else:
        requests = v1_requests([encode_image(image) for image in images], args.batch_size)
    capacity, attacker, ratios, fill_s = [], [], [], []
    cpu: dict[str, list[float]] = {"loadgen": [], "service_under_loadgen": [], "attacker": [],
                                   "service_under_attacker": []}  # fmt: skip
    for repeat in range(args.repeats):
        service0, client0 = process_cpu_s(pid), self_cpu_s()
        load = asyncio.run(
            generate_load(
                url, concurrency=args.concurrency, images_per_request=args.batch_size,
                duration_s=args.duration, requests=requests,
            )
        )  # fmt: skip
        sent = max(load.sent, 1)
        cpu["loadgen"].append((self_cpu_s() - client0) / sent * 1e6)
        cpu["service_under_loadgen"].append((process_cpu_s(pid) - service0) / sent * 1e6)
        capacity.append(load.images_per_s)
        budget = max(args.batch_size * args.concurrency, int(load.images_per_s * args.duration))
        config = QueryConfig(
            url=url, pool=dataset, budget=budget,
            db=tmp / f"{pool_name}-{protocol}-{repeat}.sqlite", seed=repeat,
            concurrency=args.concurrency, batch_size=args.batch_size, pool_size=budget,
            pool_image_size=32, progress=False, protocol=protocol,
        )  # fmt: skip
        # a run makes each pool image once; the images made for the load generator, or by an
        # earlier run of the same seed, must not come free from the process's cache or the disk
        with own_pool_store(tmp, dataset):
            NATURAL_CACHE.clear()
            if kept:
                fill_s.append(fill_pool(config))
                NATURAL_CACHE.clear()
            service0, client0 = process_cpu_s(pid), self_cpu_s()
            result = run_query(config)
        if not result.complete:
            raise SystemExit(f"attacker run {repeat} on {pool_name} did not complete")
        requests_sent = max(result.stats.requests, 1)
        cpu["attacker"].append((self_cpu_s() - client0) / requests_sent * 1e6)
        cpu["service_under_attacker"].append((process_cpu_s(pid) - service0) / requests_sent * 1e6)
        attacker.append(result.images_per_s)
        # no request fit in the window (an overloaded machine): no ratio, not a division by 0
        ratios.append(result.images_per_s / load.images_per_s if load.images_per_s else math.nan)
        print(
            f"{pool_name} {protocol} repeat {repeat}: service {load.images_per_s:.0f} img/s "
            f"(errors {load.errors}, unanswered {load.unanswered}), "
            f"attacker {result.images_per_s:.0f} img/s "
            f"({budget} images in {result.seconds:.2f} s)",
            file=sys.stderr,
        )
    measured = [r for r in ratios if not math.isnan(r)]
    return {
        "attacker_vs_service_capacity": statistics.median(measured) if measured else None,
        "repeats_without_capacity": len(ratios) - len(measured),
        "attacker_images_per_s": statistics.median(attacker),
        "service_images_per_s": statistics.median(capacity),
        "cpu_us_per_request": {k: statistics.median(v) for k, v in cpu.items()},
        **({"fill_s": fill_s} if kept else {}),
        "samples": {
            "service_images_per_s": capacity,
            "attacker_images_per_s": attacker,
            "ratios": ratios,
        },
    }


def pool_spec(name: str) -> tuple[str, bool]:
    """`natural@kept` -> ("natural", True): the dataset, and whether its images are made and
    kept on disk before the timed run."""
    dataset, _, variant = name.partition("@")
    if variant not in ("", "kept") or (variant and dataset != "natural"):
        raise ValueError(f"pool {name!r}: only natural@kept has a variant")
    return dataset, variant == "kept"


@contextlib.contextmanager
def own_pool_store(tmp: Path, dataset: str) -> Iterator[None]:
    """A `natural` run's images kept under a new folder of its own, where no earlier run (of
    another layout or protocol, same seed) left any; an archive's pool keeps the user's cache
    folder, where the archive is unpacked."""
    if dataset != "natural":
        yield
        return
    before = os.environ.get("TESTBED_CACHE_DIR")
    os.environ["TESTBED_CACHE_DIR"] = tempfile.mkdtemp(prefix="pools-", dir=tmp)
    try:
        yield
    finally:
        if before is None:
            del os.environ["TESTBED_CACHE_DIR"]
        else:
            os.environ["TESTBED_CACHE_DIR"] = before


def fill_pool(config: QueryConfig) -> float:
    """Make and keep every image of the run's pool; the seconds it took."""
    start = time.perf_counter()
    pool = load_pool_of(config)
    for index in range(len(pool)):
        pool.image(index)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="the service's device")
    parser.add_argument(
        "--pools", default="noise,natural",
        help="comma-separated pools; the headline figures are the first one's",
    )  # fmt: skip
    parser.add_argument(
        "--protocols", default="v1,v2", help="comma-separated; the headline is the first one's"
    )
    parser.add_argument(
        "--cores", default="shared,split",
        help="comma-separated CPU layouts: shared (client and service on all cores, as on one "
        "machine) and split (service on one half, clients on the other: two machines)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeats < 1 or not args.duration > 0:
        parser.error("--repeats must be at least 1 and --duration above 0")
    pools = [p for p in args.pools.split(",") if p]
    for name in pools:  # before the victim is trained and the service started
        try:
            check_dataset(pool_spec(name)[0])
        except ValueError as exc:
            parser.error(str(exc))
    protocols = [p for p in args.protocols.split(",") if p]
    if not pools or not set(protocols) <= {"v1", "v2"} or not protocols:
        parser.error("--pools: one dataset or more; --protocols: v1, v2 or both")
    layouts = [c for c in args.cores.split(",") if c]
    halves = split_cpus()
    if "split" in layouts and halves is None:
        print("one CPU only: no split layout", file=sys.stderr)
        layouts.remove("split")

    by_cores = {}
    with tempfile.TemporaryDirectory(prefix="attack-bench-") as tmp:
        checkpoint = throwaway_victim(Path(tmp) / "victim.pt")
        env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_DEVICE": args.device}
        for layout in layouts:
            service_cpus, client_cpus = halves if layout == "split" else (None, None)
            with contextlib.ExitStack() as stack:
                with pinned(service_cpus):
                    url, process = stack.enter_context(service_process(env, ready_timeout=300))
                with pinned(client_cpus):
                    by_protocol = {
                        protocol: {
                            name: measure(args, url, process.pid, name, protocol, Path(tmp))
                            for name in pools
                        }
                        for protocol in protocols
                    }
            by_cores[layout] = {
                "service_cpus": sorted(service_cpus) if service_cpus else "all",
                "client_cpus": sorted(client_cpus) if client_cpus else "all",
                "attacker_vs_service_capacity": by_protocol[protocols[0]][pools[0]][
                    "attacker_vs_service_capacity"
                ],
                "by_protocol": by_protocol,
            }
    main_layout = by_cores[layouts[0]]
    by_protocol = main_layout["by_protocol"]
    by_pool = by_protocol[protocols[0]]
    headline = by_pool[pools[0]]
    out = {
        "attacker_vs_service_capacity": headline["attacker_vs_service_capacity"],
        "attacker_images_per_s": headline["attacker_images_per_s"],
        "service_images_per_s": headline["service_images_per_s"],
        "pool": pools[0],
        "protocol": protocols[0],
        "cores": layouts[0],
        "target": TARGET,
        "by_pool": by_pool,
        "by_protocol": by_protocol,
        "by_cores": by_cores,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "victim": "cnn9 random init, 32x32, 10 classes",
        "device": args.device,
        **machine(),
    }
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    friendly(main)()
