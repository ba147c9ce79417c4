"""What the benchmarks share: a CIFAR-sized throwaway victim and sample payloads."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from shared.checkpoint import ModelCard, save_checkpoint
from shared.imaging import encode_image
from shared.models import create_model


def throwaway_victim(
    path: Path, arch: str = "cnn9", num_classes: int = 10, seed: int = 0, side: int = 32
) -> Path:
    """A randomly initialised side x side victim: throughput does not depend on training."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes)
    card = ModelCard(
        arch=arch, num_classes=num_classes, classes=[str(i) for i in range(num_classes)],
        input_size=side, mean=[0.5] * 3, std=[0.25] * 3, dataset="none", seed=seed,
    )  # fmt: skip
    return save_checkpoint(path, model, card)


def throwaway_filter(
    path: Path, arch: str = "cnn5", classes: int = 210, sees: int = 16, seed: int = 0
) -> Path:
    """A `defender:<arch>` OOD filter with random weights: its serving cost does not depend on
    training, only on the backbone's shape and the side it sees (the recommended ones by
    default: fed the victim's 32 px, it looks at them scaled to 16)."""
    from defense.features import Backbone
    from defense.ood import OODFilter

    torch.manual_seed(seed)
    model = create_model(arch, classes)
    dim = model.head.in_features
    backbone = Backbone(model, f"defender:{arch}", sees, arch=arch)
    coef = np.random.default_rng(seed).normal(size=dim)
    meta = {"backbone": f"defender:{arch}", "image_size": 32, "in_dataset": "none"}
    ood = OODFilter(backbone, np.zeros(dim), np.ones(dim), coef, 0.0, 0.5, meta)
    return ood.save(path)


def sample_images(n: int = 256, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def sample_payloads(n: int = 256, side: int = 32, seed: int = 0) -> list[bytes]:
    return [encode_image(im) for im in sample_images(n, side, seed)]


def module_at(revision: str, path: str) -> ModuleType:
    """The project's module at `path` (e.g. shared/schemas.py) as it was at git `revision`,
    loaded under its own name beside the working tree's: old and new code timed in one process."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{revision}:{path}"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    name = f"{Path(path).stem}_at_{revision}"
    copy = Path(tempfile.mkdtemp()) / f"{name}.py"
    copy.write_text(source)
    spec = importlib.util.spec_from_file_location(name, copy)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # where dataclasses look their module's names up
    spec.loader.exec_module(module)
    return module


def revision_ab(
    path: str,
    cases: Callable[[ModuleType, ModuleType], dict[str, Callable[[ModuleType], float]]],
    rounds: int,
    argv: list[str] | None = None,
) -> dict:
    """The main of an in-process A/B script: `SCRIPT REVISION [--rounds N] [--json OUT]`.

    `path`'s module at REVISION ("base") and the working tree's ("new") go to `cases`, which
    checks they agree and returns each case's measure (microseconds, given a module). Each
    measure runs on base then new, `rounds` times over (alternated, so the host's drift hits
    both); their medians, new over base and every round are printed and written as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("revision")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    base = module_at(args.revision, path)
    new = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    results = {}
    for name, measure in cases(base, new).items():
        times: dict[str, list[float]] = {"base": [], "new": []}
        for _ in range(args.rounds):
            for side, code in (("base", base), ("new", new)):
                times[side].append(measure(code))
        b, n = statistics.median(times["base"]), statistics.median(times["new"])
        results[name] = {"base_us": b, "new_us": n, "new_over_base": n / b, "rounds": times}
        print(f"{name:18s} base {b:8.2f} us  new {n:8.2f} us  new/base {n / b:.2f}")
    out = {"base_revision": args.revision, "results": results, **machine()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


def machine() -> dict:
    """What a figure needs beside it to be read: the cores, how busy they were, when."""
    return {
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: Path | None, results: dict) -> None:
    text = json.dumps(results, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


def split_cpus() -> tuple[set[int], set[int]] | None:
    """This process's CPUs in two halves (service, clients), or None with fewer than two: two
    machines' worth of cores, so client and service stop taking CPU from each other."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


@contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block on `cpus` only (None: unchanged); the processes and threads it starts
    inherit the mask, and keep it after the block."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
