"""Measure the defenses: the OOD filter against its baselines, and what each defense costs users.

Results are data first (dicts ready for JSON); the Markdown tables are generated from them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the OOD evaluation has its own module; its names stay importable from here
from defense.ood_eval import detection_metrics, evaluate_ood, ood_markdown  # noqa: F401
from defense.ood_eval import subsample as _subsample
from defense.registry import BuildContext, build_steps, defenses, get_defense, read_all
from shared.checkpoint import check_same_classes, load_checkpoint
from shared.datasets import load_dataset
from shared.pipeline import Blackbox, Granularity

# --------------------------------------------------------------------------- benign utility


@dataclass
class UtilityConfig:
    """One defended configuration: registered defenses' settings and the output granularity."""

    name: str
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)
    """defense name -> its settings fields (see `defense.registry`)."""
    granularity: dict[str, Any] = field(default_factory=dict)
    """`Granularity` fields: mode, top_k, decimals."""


def _label(name: str, values: dict[str, Any]) -> str:
    """`name(field=value,...)` for the values set; paths (the OOD artefact) are left out."""
    shown = [f"{k}={v}" for k, v in values.items() if not isinstance(v, Path)]
    return f"{name}({','.join(shown)})" if shown else name


def default_configs(
    ood: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    round_decimals: int = 2,
) -> list[UtilityConfig]:
    """No defense, each registered defense at each of its default sweeps, the granularities,
    and everything at once. `overrides` (defense -> fields) replace a defense's defaults;
    `ood` is the filter artefact (the OOD rows need one)."""
    overrides = {name: dict(v) for name, v in (overrides or {}).items()}
    for name in overrides:
        get_defense(name)
    if ood is not None:
        overrides.setdefault("ood", {}).setdefault("detector", Path(ood))
    configs = [UtilityConfig("none")]
    everything: dict[str, dict[str, Any]] = {}
    for d in defenses():
        for sweep in d.settings.sweeps or ({},):
            values = {**sweep, **overrides.get(d.name, {})}
            settings = d.read(values, env=False)
            if not d.enabled(settings):
                continue  # e.g. the OOD filter without an artefact
            # labelled by the parsed values: a --set value arrives as a string ("0.1")
            shown = {k: getattr(settings, k) for k in values}
            configs.append(UtilityConfig(_label(d.name, shown), {d.name: values}))
            everything.setdefault(d.name, values)
    configs += [
        UtilityConfig(f"round({round_decimals})", granularity={"decimals": round_decimals}),
        UtilityConfig("top-1", granularity={"mode": "topk", "top_k": 1}),
        UtilityConfig("label-only", granularity={"mode": "label"}),
        UtilityConfig("all", everything, {"decimals": round_decimals}),
    ]
    return configs


def evaluate_utility(
    victim: str | Path,
    dataset: str | None,
    configs: list[UtilityConfig],
    *,
    limit: int | None = None,
    clients: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Benign accuracy through the defended black box (the service's own steps), per defense.

    The test split is sent in batches of `batch_size`, round-robin from `clients` benign clients
    (stateful defenses see each client's own stream). Refused rows count as wrong. The steps are
    built by the registry exactly as the service builds them (float32, no autocast). `dataset`
    None: the victim's own.
    """
    from tqdm.auto import tqdm

    dev = torch.device(device)
    model, card = load_checkpoint(victim, dev)
    dataset = dataset or card.dataset
    test = load_dataset(dataset, "test", size=limit, image_size=card.input_size, seed=seed)
    check_same_classes(card, dataset, list(test.classes))
    index = _subsample(len(test), limit, seed)
    images = test.arrays(card.input_size)[index]
    targets = np.asarray(test.targets)[index]
    order = np.random.default_rng(seed).permutation(len(images))
    images, targets = images[order], targets[order]
    owners = [f"benign-{i % clients}" for i in range(len(images))]
    context = BuildContext(model, card, dev, amp=False, seed=seed)
    results = []
    for config in tqdm(configs, desc="defenses", disable=not progress):
        settings = read_all(config.defenses, env=False)
        steps = build_steps(settings, context)
        blackbox = Blackbox(model, card.input_size, steps, Granularity(**config.granularity), dev)
        correct = refused = 0
        flagged: dict[str, int] = {}
        start = time.perf_counter()
        for s in range(0, len(images), batch_size):
            batch = blackbox.answer(images[s : s + batch_size], owners[s : s + batch_size])
            rows = blackbox.granularity.format(batch)
            rejected = batch.mask("rejected").tolist()
            for row, target, no in zip(rows, targets[s : s + batch_size], rejected, strict=True):
                refused += int(no)
                correct += int(not no and row.label == int(target))
            for name, mask in batch.flags.items():
                flagged[name] = flagged.get(name, 0) + int(mask.sum())
        seconds = time.perf_counter() - start
        used = {name: settings[name].model_dump(mode="json") for name in config.defenses}
        results.append(
            {
                "defense": config.name,
                "settings": {
                    **used,
                    **({"granularity": config.granularity} if config.granularity else {}),
                },
                "accuracy": correct / len(images),
                "refused": refused / len(images),
                "flagged": {k: v / len(images) for k, v in flagged.items()},
                "images_per_second": len(images) / seconds,
            }
        )
    return {
        "victim": str(victim),
        "dataset": dataset,
        "n_images": int(len(images)),
        "clients": clients,
        "batch_size": batch_size,
        "seed": seed,
        "results": results,
    }


def utility_markdown(result: dict) -> str:
    base = next((r for r in result["results"] if r["defense"] == "none"), None)
    lines = [
        f"Benign accuracy on {result['dataset']} test ({result['n_images']} images, "
        f"{result['clients']} clients, batches of {result['batch_size']}).",
        "",
        "| Defense | Accuracy | Change | Refused | Flagged | Images/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        change = r["accuracy"] - base["accuracy"] if base else float("nan")
        flags = ", ".join(f"{k} {v:.3f}" for k, v in r["flagged"].items()) or "-"
        lines.append(
            f"| {r['defense']} | {r['accuracy']:.4f} | {change:+.4f} | {r['refused']:.3f} | "
            f"{flags} | {r['images_per_second']:.0f} |"
        )
    return "\n".join(lines)
