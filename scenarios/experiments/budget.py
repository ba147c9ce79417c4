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
from scenarios.experiments.report import header, publish
from scenarios.experiments.steps import (
    QuerySpec,
    VictimSpec,
    cached_transfer_set,
    cached_victim,
    knockoff_row,
)
from shared.errors import TestbedError

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
PAPERS = BudgetConfig(victim=scale.PAPERS_VICTIM, knockoff=scale.papers_knockoff())
"""The same grid with a ResNet-34 victim and knockoff at 64 px (a GPU's work)."""


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


def assemble(rows: list[dict], config: dict, quick: bool, victim_checkpoint: Path | str) -> dict:
    """results.json from the rows (a run's, or several runs' merged): the summary over seeds,
    the verdict, and a note where the grid is a subset of the experiment's."""
    summary = summarize(rows)
    decision = verdict(summary)
    word = "beats" if decision["adaptive_beats_random"] else (
        "matches (within one seed standard deviation)" if decision["adaptive_matches_random"]
        else "does not match")  # fmt: skip
    gaps = decision["adaptive_minus_random"].items()
    notes = [f"adaptive {word} random at every budget measured (mean recovery, adaptive minus "
             "random: " + ", ".join(f"{b}: {g:+.3f}" for b, g in gaps) + ")"]  # fmt: skip
    full = QUICK if quick else FULL
    budgets, seeds = sorted(config["budgets"]), sorted(config["seeds"])
    if (budgets, seeds) != (sorted(full.budgets), sorted(full.seeds)):
        notes.append(f"a subset of the grid: budgets {budgets}, seeds {seeds} (the full grid: "
                     f"budgets {list(full.budgets)}, seeds {list(full.seeds)})")  # fmt: skip
    seeds_at = {b: sorted({r["seed"] for r in rows if r["queries"] == b}) for b in budgets}
    uneven = {b: k for b, k in seeds_at.items() if k != seeds}
    if uneven:
        notes.append("not every seed at every budget: " + ", ".join(
            f"{b}: seeds {k}" for b, k in uneven.items()))  # fmt: skip
    results = {
        **header("budget", __doc__, quick=quick, seed=seeds, config=config,
                 victim_checkpoint=victim_checkpoint, victim_accuracy=rows[0]["victim_accuracy"]),
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
    }  # fmt: skip
    return results


def merge(parts: list[dict]) -> dict:
    """One results.json from runs of the same experiment on different budgets or seeds (the
    grid run in pieces): a knockoff at budget b trains on the first b answers of a run, which
    is what a run of any larger budget asks first, so the pieces' rows are the full grid's.
    Refuses pieces whose victim, scale or configuration (apart from budgets, seeds and
    strategies) differ, and points measured twice."""
    if not parts:
        raise TestbedError("merge: no results to merge")

    def identity(part: dict) -> tuple:
        grid = ("budgets", "seeds", "strategies")
        rest = {k: v for k, v in part["config"].items() if k not in grid}
        # results written before knockoffs had `keep` kept the best epoch's weights
        rest["knockoff"] = {"keep": "best", **rest.get("knockoff", {})}
        return part.get("experiment"), part["quick"], part["victim_checkpoint"], rest

    first = parts[0]
    if first.get("experiment") != "budget":
        raise TestbedError(f"merge: a {first.get('experiment')!r} result is not a budget one")
    if any(identity(part) != identity(first) for part in parts):
        raise TestbedError(
            "merge: the results differ in their scale, victim or configuration (apart from "
            "budgets, seeds and strategies): they are not pieces of one grid"
        )
    rows, seen = [], set()
    for part in parts:
        for row in part["rows"]:
            point = (row["strategy"], row["seed"], row["queries"])
            if point in seen:
                raise TestbedError(f"merge: {point[0]} seed {point[1]} at {point[2]} queries "
                                   "is in two of the results")  # fmt: skip
            seen.add(point)
            rows.append(row)
    strategies = [s for s in FULL.strategies if any(s in p["config"]["strategies"] for p in parts)]
    strategies += sorted({s for p in parts for s in p["config"]["strategies"]} - set(strategies))
    order = {name: i for i, name in enumerate(strategies)}
    rows.sort(key=lambda r: (order[r["strategy"]], r["seed"], r["queries"]))
    config = {**first["config"], "strategies": strategies,
              "budgets": sorted({b for p in parts for b in p["config"]["budgets"]}),
              "seeds": sorted({k for p in parts for k in p["config"]["seeds"]})}  # fmt: skip
    results = assemble(rows, config, first["quick"], first["victim_checkpoint"])
    results["seconds"] = sum(p["seconds"] for p in parts)
    results["merged_from"] = len(parts)
    return results


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
    results = assemble(rows, asdict(config), quick, victim_path)
    results["seconds"] = time.perf_counter() - start
    publish(results, out)
    return results


register(
    Experiment(
        name="budget",
        merge=merge,
        description="recovery against the budget, random against adaptive, over seeds",
        run=run,
        full=FULL,
        quick=QUICK,
        papers=PAPERS,
        set_elsewhere={
            "knockoff.seed": "each knockoff takes its run's seed (set seeds=...)",
        },
    )
)
