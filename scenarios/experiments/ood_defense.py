"""Atli et al.'s OOD filter as a defense: what it detects, takes from attackers, costs users.

Part 1 (Atli Table 4): the filter's TPR on the attacker's pool and TNR on the victim's test
images at its own threshold, with AUROC, beside the baselines on the victim (max softmax, ODIN,
Mahalanobis, energy, kNN) at the same TNR, for each attacker transform (`defense.ood_eval`).
Part 2 (Atli Table 5): a KnockoffNets attacker's recovery against the undefended service and
against the service whose filter answers flagged queries with a shuffled vector, for a plain
attacker and for one that re-encodes its queries with the transform of part 1 under which the
filter caught the fewest queries (an attacker can try the transforms and keep the best).
Both attackers draw the same pool images. Part 3: benign accuracy through the defended API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from attacker.train import KnockoffOptions
from scenarios.experiments import pools, scale
from scenarios.experiments.cache import artefact_key, cached_path, making
from scenarios.experiments.filters import FilterSpec, cached_filter, filter_config, flagged_fraction
from scenarios.experiments.probes import cached_benign
from scenarios.experiments.registry import Experiment, register
from scenarios.experiments.report import header, publish, pyplot, save_figure
from scenarios.experiments.steps import (
    QuerySpec,
    VictimSpec,
    cached_transfer_set,
    cached_victim,
    knockoff_row,
)
from shared.checkpoint import load_checkpoint
from shared.transforms import DEFAULT_ATTACK_TRANSFORMS

Say = Callable[[str], object]


@dataclass(frozen=True)
class OODDefenseConfig:
    victim: VictimSpec = scale.VICTIM
    pool: str = scale.POOL
    pool_size: int | None = None
    sample: int = 10_000
    """Pool images both attackers draw from (written once per transform)."""
    budget: int = 5_000
    transforms: tuple[str, ...] = DEFAULT_ATTACK_TRANSFORMS
    detection_attack_images: int = 5_000
    benign_images: int | None = 2_000
    filter: FilterSpec = scale.FILTER
    knockoff: KnockoffOptions = field(default_factory=scale.knockoff)
    seed: int = 0


FULL = OODDefenseConfig()
QUICK = OODDefenseConfig(
    victim=scale.QUICK_VICTIM,
    pool=scale.QUICK_POOL,
    pool_size=1_000,
    sample=800,
    budget=600,
    transforms=("none", "jpeg:50", "resize:16"),
    detection_attack_images=500,
    benign_images=None,
    filter=scale.QUICK_FILTER,
    knockoff=scale.quick_knockoff(),
)
"""Embedded data only: digits victim, natural pool (the defender's natural images drawn with
another seed than the attacker's)."""


def detection(config: OODDefenseConfig, say: Say) -> dict:
    """Part 1: `defense.ood_eval.evaluate_ood` per transform, with the baselines (cached)."""
    from defense.ood_eval import evaluate_ood

    spec = {"filter": artefact_key("ood-filters", filter_config(config.filter)),
            "victim": artefact_key("victims", asdict(config.victim)),
            "pool": config.pool, "pool_size": config.pool_size,
            "attack_images": config.detection_attack_images, "benign": config.benign_images,
            "transforms": list(config.transforms), "seed": config.seed}  # fmt: skip
    path = cached_path("ood-detection", spec, ".result.json")
    with making(path):
        if path.exists():
            return json.loads(path.read_text())
        say(f"  detection: filter and baselines under {len(config.transforms)} transforms")
        result = evaluate_ood(
            cached_filter(config.filter), cached_victim(config.victim), config.victim.dataset,
            config.pool, transforms=config.transforms,
            attack_limit=config.pool_size or config.detection_attack_images,
            in_limit=config.benign_images, baselines=True, seed=config.seed, progress=False,
        )  # fmt: skip
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def evasive_transform(result: dict) -> str:
    """The re-encoding under which the filter caught the fewest attacker queries (not `none`)."""
    per = {k: v for k, v in result["per_transform"].items() if k != "none"}
    return min(per, key=lambda k: per[k]["tpr"]) if per else "none"


def _benign(config: OODDefenseConfig, filtered: bool, say: Say) -> dict:
    """Part 3: the victim's test images through the service, with and without the filter."""
    env = config.filter.env("shuffle") if filtered else {}
    return cached_benign(config.victim, env, config.benign_images, 1, config.seed, say)


def run(
    out: Path, quick: bool = False, say: Say = print, config: OODDefenseConfig | None = None
) -> dict:
    """All three parts; writes out/results.json, results.md, results.png."""
    config = config or (QUICK if quick else FULL)
    start = time.perf_counter()
    _, card = load_checkpoint(cached_victim(config.victim, say))
    found = detection(config, say)
    evasive = evasive_transform(found)
    options = replace(config.knockoff, seed=config.seed, progress=False)
    rows = []
    for attacker, transform in (("plain", "none"), ("re-encoding", evasive)):
        pool = pools.transformed(config.pool, config.pool_size, config.sample, transform,
                                 card.input_size, config.seed)  # fmt: skip
        query = QuerySpec(pool, None, config.budget, seed=config.seed)
        for filtered in (False, True):
            t = time.perf_counter()
            env = config.filter.env("shuffle") if filtered else {}
            db = cached_transfer_set(config.victim, env, query, say)
            k = knockoff_row(db, config.budget, options, config.victim)
            rows.append({
                "setting": f"{attacker} ({transform}){' + filter' if filtered else ''}",
                "attacker": attacker, "transform": transform, "filter": filtered,
                "queries": config.budget, "flagged": flagged_fraction(config.filter, db),
                "knockoff_accuracy": k["knockoff_accuracy"], "recovery": k["recovery"],
                "agreement": k["agreement"], "victim_accuracy": k["victim_accuracy"],
                "seconds": time.perf_counter() - t,
            })  # fmt: skip
            say(f"  {rows[-1]['setting']}: flagged {rows[-1]['flagged']:.3f}, "
                f"recovery {k['recovery']:.3f}")  # fmt: skip
    for r in rows:
        base = next(b for b in rows if b["attacker"] == r["attacker"] and not b["filter"])
        r["recovery_vs_undefended"] = r["recovery"] / base["recovery"] if base["recovery"] else 0.0
    benign = {"undefended": _benign(config, False, say), "filter": _benign(config, True, say)}
    results = {
        **header("ood-defense", __doc__, quick=quick, seed=config.seed,
                 config=asdict(config), victim_checkpoint=cached_victim(config.victim),
                 victim_accuracy=rows[0]["victim_accuracy"]),
        "detection": {
            k: found[k]
            for k in (
                "per_transform",
                "worst_tpr",
                "worst_tnr",
                "worst_auroc",
                "worst_tpr_transform",
                "n_benign",
                "n_attack",
                "detector_meta",
            )
        },  # fmt: skip
        "evasive_transform": evasive,
        "rows": rows,
        "benign": benign,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    publish(results, out, markdown, plot)
    return results


# ------------------------------------------------------------------------------ report

BASELINE_ORDER = ("msp", "odin", "mahalanobis", "energy", "knn")


def markdown(results: dict) -> str:
    d, c = results["detection"], results["config"]
    names = [n for n in BASELINE_ORDER if "baselines" in next(iter(d["per_transform"].values()))]
    lines = [
        f"# ood-defense{' (quick)' if results.get('quick') else ''}",
        "",
        results["description"],
        "",
        f"Victim {c['victim']['arch']} on {c['victim']['dataset']} (accuracy "
        f"{results['victim_accuracy']:.4f}); filter `{c['filter']['backbone']}` trained on "
        f"{c['filter']['in_dataset']} against {c['filter']['out_dataset']}; attacker pool "
        f"{c['pool']}; seed {results['seed']}.",
        "",
        f"## Detection (Atli Table 4): {d['n_attack']} attacker images, {d['n_benign']} benign",
        "",
        "| transform | filter TPR | filter TNR | filter AUROC | "
        + " | ".join(f"{n} TPR" for n in names)
        + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for spec, m in d["per_transform"].items():
        cells = [f"{m['baselines'][n]['tpr']:.3f}" for n in names]
        lines.append(f"| {spec} | {m['tpr']:.3f} | {m['tnr']:.3f} | {m['auroc']:.3f} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    lines += [
        "",
        "Baselines thresholded at the filter's TNR for each transform.",
        "",
        f"## Knockoff recovery (Atli Table 5), {c['budget']} queries; the re-encoding attacker "
        f"uses `{results['evasive_transform']}`",
        "",
        "| attacker | filter | flagged | knockoff accuracy | recovery | agreement "
        "| recovery / undefended |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['attacker']} ({r['transform']}) | {'on' if r['filter'] else 'off'} | "
            f"{r['flagged']:.3f} | {r['knockoff_accuracy']:.3f} | {r['recovery']:.3f} | "
            f"{r['agreement']:.3f} | {r['recovery_vs_undefended']:.2f}x |"
        )
    b = results["benign"]
    lines += [
        "",
        f"## Benign accuracy through the API ({b['undefended']['images']} test images)",
        "",
        f"Undefended {b['undefended']['accuracy']:.4f}; behind the filter "
        f"{b['filter']['accuracy']:.4f} (flagged benign queries get shuffled answers).",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    plt = pyplot()

    d = results["detection"]["per_transform"]
    specs = list(d)
    names = [n for n in BASELINE_ORDER if "baselines" in d[specs[0]]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    width = 0.8 / (1 + len(names))
    x = np.arange(len(specs))
    axes[0].bar(x, [d[s]["tpr"] for s in specs], width, label="filter")
    for i, n in enumerate(names, start=1):
        axes[0].bar(x + i * width, [d[s]["baselines"][n]["tpr"] for s in specs], width, label=n)
    axes[0].set_xticks(x + width * len(names) / 2, specs, rotation=30)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("attacker queries caught (TPR) at the filter's TNR")
    axes[0].legend(fontsize=7)
    rows = results["rows"]
    labels = [f"{r['attacker']}\n{'filter' if r['filter'] else 'none'}" for r in rows]
    axes[1].bar(labels, [r["recovery"] for r in rows], color="#4c72b0")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title(f"knockoff recovery at {results['config']['budget']} queries")
    return save_figure(fig, path)


register(
    Experiment(
        name="ood-defense",
        description="the OOD filter against the baselines, then against plain and re-encoding "
        "knockoff attackers",
        run=run,
        full=FULL,
        quick=QUICK,
        markdown=markdown,
        plot=plot,
        set_elsewhere={
            "knockoff.seed": "the knockoffs take the run's seed (set seed=...)",
        },
    )
)
