"""What the OOD filter costs in serving throughput: the service with and without it.

The filter runs its own backbone on every batch (unless it is the victim itself), so its
price is a second forward pass. Measured over HTTP against the real service, interleaved
(none, filter, none, filter, ...) and repeated; the medians are reported. Throughput does not
depend on training, so both models are random-weight stand-ins of the recommended shapes
(a cnn9 victim, a `defender:cnn5` filter with 210 classes).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import numpy as np

from benchmarks.loadgen import generate_load
from victim_service.launch import service_process

POINTS = (("batch32_c16", 32, 16), ("single_c64", 1, 64))


def throwaway_filter(path: Path, arch: str = "cnn5", classes: int = 210, side: int = 32) -> Path:
    """A `defender:<arch>` filter with random weights (throughput does not depend on them)."""
    import torch

    from defense.features import Backbone
    from defense.ood import OODFilter
    from shared.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, classes)
    dim = model.head.in_features
    backbone = Backbone(model, f"defender:{arch}", side, arch=arch)
    rng = np.random.default_rng(0)
    meta = {"backbone": f"defender:{arch}", "image_size": side, "in_dataset": "none"}
    return OODFilter(
        backbone, np.zeros(dim), np.ones(dim), rng.normal(size=dim), 0.0, 0.5, meta
    ).save(path)


def filter_cost(
    checkpoint: Path,
    detector: Path,
    payloads: list[bytes],
    seconds: float = 3.0,
    repeats: int = 3,
) -> dict:
    """Median images/s per load point without and with the filter, and the relative cost."""
    runs: dict[str, dict[str, list[float]]] = {"none": {}, "ood": {}}
    base = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_BATCH_MAX_WAIT_MS": "2",
            "VICTIM_MAX_IMAGES": "64"}  # fmt: skip
    for _ in range(repeats):
        for name, extra in (("none", {}), ("ood", {"VICTIM_OOD_DETECTOR": str(detector)})):
            with service_process({**base, **extra}) as (url, _):
                for key, per_request, concurrency in POINTS:
                    r = asyncio.run(
                        generate_load(url, payloads, concurrency=concurrency,
                                      images_per_request=per_request, duration_s=seconds)
                    )  # fmt: skip
                    if r.errors:
                        raise RuntimeError(f"{name} {key}: {r.errors} failed requests")
                    runs[name].setdefault(key, []).append(r.images_per_s)
                    print(f"{name:5s} {key:12s} {r.images_per_s:8.0f} img/s", flush=True)
    out: dict = {"repeats": repeats, "seconds_per_point": seconds, "points": {}}
    for key, _, _ in POINTS:
        none = statistics.median(runs["none"][key])
        ood = statistics.median(runs["ood"][key])
        out["points"][key] = {
            "none_images_per_s": none,
            "ood_images_per_s": ood,
            "cost": 1 - ood / none,
            "runs": {"none": runs["none"][key], "ood": runs["ood"][key]},
        }
    out["worst_cost"] = max(p["cost"] for p in out["points"].values())
    out["target_cost"] = 0.25
    return out
