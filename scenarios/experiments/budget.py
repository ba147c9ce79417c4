"""Recovery against the query budget, random against adaptive sampling, over seeds.

Copycat's Fig. 5 and Knockoff Nets' adaptive claim: a fresh knockoff per point, several seeds
with their mean and spread.

Per (strategy, seed) the live service answers one run at the largest budget; the knockoff at
budget b trains on that run's first b answers, which is exactly what a run of budget b asks
(both strategies' plans depend only on the seed and the answers so far, never on the budget).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from attacker.strategies import AdaptiveConfig
from attacker.train import KnockoffOptions
from scenarios.experiments import scale
from scenarios.experiments.registry import Experiment, register
from scenarios.experiments.report import publish
from scenarios.experiments.steps import (
    QuerySpec,
    VictimSpec,
    cached_transfer_set,
    cached_victim,
    knockoff_row,
)

PROBABILITIES = {"VICTIM_OUTPUT": "probs"}


@dataclass(frozen=True)
class BudgetConfig:
    """The issue's default scale (CIFAR-10 victim, Tiny-ImageNet attacker pool): budgets on a
    log scale from 1k to the whole 60k pool, three seeds."""

    victim: VictimSpec = scale.VICTIM
    pool: str = scale.POOL
    pool_size: int | None = None
    budgets: tuple[int, ...] = (1_000, 2_000, 5_000, 10_000, 20_000, 60_000)
    strategies: tuple[str, ...] = ("random", "adaptive")
    seeds: tuple[int, ...] = (0, 1, 2)
    knockoff: KnockoffOptions = field(default_factory=scale.knockoff)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)


FULL = BudgetConfig()
QUICK = BudgetConfig(
    victim=scale.QUICK_VICTIM,
    pool=scale.QUICK_POOL,
    pool_size=3_000,
    budgets=(200, 600, 1_800),
    seeds=(0, 1),
    knockoff=scale.quick_knockoff(),
)
"""Embedded data only (digits victim, natural pool): two seeds, three budgets."""


def summarize(rows: list[dict], value: str = "recovery") -> list[dict]:
    """Mean, standard deviation, min and max of `value` over seeds, per (strategy, budget)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["queries"]), []).append(row[value])
    return [
        {"strategy": s, "queries": b, "seeds": len(v), f"{value}_mean": float(np.mean(v)),
         f"{value}_std": float(np.std(v)), f"{value}_min": float(min(v)),
         f"{value}_max": float(max(v))}
        for (s, b), v in groups.items()
    ]  # fmt: skip


def verdict(summary: list[dict]) -> dict:
    """Adaptive against random at every budget measured, judged against the seeds' noise:
    it matches where its mean recovery is at most one seed standard deviation (the larger of
    the two strategies') below random's, and beats where it is more than one above."""
    points = {(r["strategy"], r["queries"]): r for r in summary}
    budgets = sorted({b for s, b in points if s == "adaptive" and ("random", b) in points})
    gaps, noise = {}, {}
    for b in budgets:
        adaptive, random = points[("adaptive", b)], points[("random", b)]
        gaps[b] = adaptive["recovery_mean"] - random["recovery_mean"]
        noise[b] = max(adaptive["recovery_std"], random["recovery_std"])
    return {
        "adaptive_minus_random": {str(b): g for b, g in gaps.items()},
        "seed_std": {str(b): n for b, n in noise.items()},
        "adaptive_matches_random": bool(gaps) and all(gaps[b] >= -noise[b] for b in budgets),
        "adaptive_beats_random": bool(gaps) and all(gaps[b] > noise[b] for b in budgets),
    }


def run(
    out: Path, quick: bool = False, say: Callable[[str], object] = print,
    config: BudgetConfig | None = None,
) -> dict:  # fmt: skip
    """Every (strategy, seed, budget); writes out/results.json, results.md, results.png."""
    config = config or (QUICK if quick else FULL)
    start = time.perf_counter()
    victim_path = cached_victim(config.victim, say)
    budgets = sorted(config.budgets)
    rows = []
    for strategy in config.strategies:
        for seed in config.seeds:
            query = QuerySpec(config.pool, config.pool_size, budgets[-1], strategy, seed,
                              config.adaptive)  # fmt: skip
            t = time.perf_counter()
            db = cached_transfer_set(config.victim, PROBABILITIES, query, say)
            say(f"  {strategy} seed {seed}: transfer set in {time.perf_counter() - t:.0f} s")
            for budget in budgets:
                e = knockoff_row(db, budget, replace(config.knockoff, seed=seed), config.victim)
                rows.append({"strategy": strategy, "seed": seed, **e})
                say(f"  {strategy} seed {seed} at {budget}: recovery {e['recovery']:.3f}")
    summary = summarize(rows)
    decision = verdict(summary)
    word = "beats" if decision["adaptive_beats_random"] else (
        "matches (within one seed standard deviation)" if decision["adaptive_matches_random"]
        else "does not match")  # fmt: skip
    gaps = decision["adaptive_minus_random"].items()
    notes = [f"adaptive {word} random at every budget measured (mean recovery, adaptive minus "
             "random: " + ", ".join(f"{b}: {g:+.3f}" for b, g in gaps) + ")"]  # fmt: skip
    full = QUICK if quick else FULL
    if (config.budgets, config.seeds) != (full.budgets, full.seeds):
        notes.append(f"a subset of the grid: budgets {list(config.budgets)}, seeds "
                     f"{list(config.seeds)} (the full grid: budgets {list(full.budgets)}, "
                     f"seeds {list(full.seeds)})")  # fmt: skip
    results = {
        "experiment": "budget",
        "description": (__doc__ or "").strip().splitlines()[0],
        "quick": quick,
        "seed": list(config.seeds),
        "config": asdict(config),
        "victim_checkpoint": str(victim_path),
        "victim_accuracy": rows[0]["victim_accuracy"],
        "rows": rows,
        "summary": summary,
        "verdict": decision,
        "table": "summary",
        "columns": [
            "strategy",
            "queries",
            "seeds",
            "recovery_mean",
            "recovery_std",
            "recovery_min",
            "recovery_max",
        ],  # fmt: skip
        "notes": notes,
        "plot": {
            "kind": "lines",
            "x": "queries",
            "y": "recovery",
            "series": "strategy",
            "logx": True,
        },  # fmt: skip
        "seconds": time.perf_counter() - start,
    }
    publish(results, out)
    return results


register(
    Experiment(
        name="budget",
        description="recovery against the budget, random against adaptive, over seeds",
        run=run,
        full=FULL,
        quick=QUICK,
    )
)
