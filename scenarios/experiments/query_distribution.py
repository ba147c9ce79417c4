"""What the attacker's choice of queries is worth, with and without the OOD filter (Atli et al.).

Four attackers with the same budget against the same victim: natural images from another
distribution (KnockoffNets' random strategy), uniform noise, Papernot's JBDA synthetic queries
(`attacker.attacks.jbda`, seeded from labelled in-distribution images) and in-distribution
images (half of the victim's test split, which it never trained on). Each queries the real
service twice: undefended, and behind the OOD filter whose flagged queries get shuffled
answers. Every knockoff is scored on the other half of the test split, which no attacker saw.
"Flagged" is the share of an attacker's queries the filter flags, scored on the images as the
service decoded them. Atli et al. (Section 5.4): natural images beat noise, and an attacker
with in-distribution data is not caught by a filter of out-of-distribution queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from attacker.train import KnockoffOptions
from scenarios.experiments import pools, scale
from scenarios.experiments.filters import FilterSpec, flagged_fraction
from scenarios.experiments.registry import Experiment, register
from scenarios.experiments.report import header, publish, pyplot, save_figure
from scenarios.experiments.steps import (
    QuerySpec,
    VictimSpec,
    cached_attack_set,
    cached_transfer_set,
    cached_victim,
    knockoff_row,
)
from shared.checkpoint import load_checkpoint
from shared.errors import TestbedError

Say = Callable[[str], object]
SOURCES = ("natural", "noise", "jbda", "in-distribution")


@dataclass(frozen=True)
class QueryDistributionConfig:
    victim: VictimSpec = scale.VICTIM
    natural_pool: str = scale.POOL
    natural_pool_size: int | None = None
    budget: int = 4_800
    """JBDA's budget is seeds * 2^rounds: 15 per class * 10 classes * 2^5."""
    jbda_seed_per_class: int = 15
    jbda_rounds: int = 5
    jbda_round_epochs: int = 10
    filter: FilterSpec = scale.FILTER
    knockoff: KnockoffOptions = field(default_factory=scale.knockoff)
    seed: int = 0


FULL = QueryDistributionConfig()
QUICK = QueryDistributionConfig(
    victim=scale.QUICK_VICTIM,
    natural_pool=scale.QUICK_POOL,
    natural_pool_size=1_000,
    budget=200,
    jbda_seed_per_class=5,
    jbda_rounds=2,
    jbda_round_epochs=3,
    filter=scale.QUICK_FILTER,
    knockoff=replace(scale.quick_knockoff(), epochs=60),
)
"""Embedded data only: digits victim (half its test split gives 225 images to query, hence
the small budget and the many epochs), natural pool; the defender's natural images are drawn
with another seed than the attacker's."""


def _query(config: QueryDistributionConfig, source: str, halves: str) -> QuerySpec | None:
    """The pool attackers' query plans (JBDA makes its own images)."""
    b, s = config.budget, config.seed
    return {
        "natural": QuerySpec(config.natural_pool, config.natural_pool_size, b, seed=s),
        "noise": QuerySpec("noise", max(2 * b, 1_000), b, seed=s),
        "in-distribution": QuerySpec(halves, None, b, seed=s),
    }.get(source)


def run(
    out: Path, quick: bool = False, say: Say = print,
    config: QueryDistributionConfig | None = None,
) -> dict:  # fmt: skip
    """Four query sources, each with and without the filter; writes out/results.*."""
    config = config or (QUICK if quick else FULL)
    start = time.perf_counter()
    _, card = load_checkpoint(cached_victim(config.victim, say))
    jbda_budget = card.num_classes * config.jbda_seed_per_class * 2**config.jbda_rounds
    if jbda_budget != config.budget:
        raise TestbedError(
            f"query-distribution: JBDA asks {jbda_budget} queries ({card.num_classes} classes "
            f"x {config.jbda_seed_per_class} seeds x 2^{config.jbda_rounds}), the others "
            f"{config.budget}: make them equal"
        )
    halves = pools.in_distribution(config.victim.dataset, card.input_size, config.seed)
    options = replace(config.knockoff, seed=config.seed, progress=False)
    jbda = {"seed": config.seed, "seed_dataset": halves, "seed_split": "train",
            "seed_per_class": config.jbda_seed_per_class, "rounds": config.jbda_rounds,
            "round_epochs": config.jbda_round_epochs, "arch": config.knockoff.arch,
            "batch_size": config.knockoff.batch_size, "lr": config.knockoff.lr}  # fmt: skip
    rows = []
    for source in SOURCES:
        for filtered in (False, True):
            t = time.perf_counter()
            env = config.filter.env("shuffle") if filtered else {}
            query = _query(config, source, halves)
            if query is None:
                db = cached_attack_set(config.victim, env, "jbda", jbda, say)
            else:
                db = cached_transfer_set(config.victim, env, query, say)
            k = knockoff_row(db, config.budget, options, config.victim, test_data=halves)
            rows.append({
                "setting": f"{source}{' + filter' if filtered else ''}", "source": source,
                "filter": filtered, "queries": config.budget,
                "flagged": flagged_fraction(config.filter, db, config.budget),
                "knockoff_accuracy": k["knockoff_accuracy"], "recovery": k["recovery"],
                "agreement": k["agreement"], "victim_accuracy": k["victim_accuracy"],
                "seconds": time.perf_counter() - t,
            })  # fmt: skip
            say(f"  {rows[-1]['setting']}: flagged {rows[-1]['flagged']:.3f}, "
                f"recovery {k['recovery']:.3f}, agreement {k['agreement']:.3f}")  # fmt: skip
    results = {
        **header("query-distribution", __doc__, quick=quick, seed=config.seed,
                 config=asdict(config), victim_checkpoint=cached_victim(config.victim),
                 victim_accuracy=rows[0]["victim_accuracy"]),
        "scored_on": f"{halves} (test half)",
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    publish(results, out, markdown, plot)
    return results


def markdown(results: dict) -> str:
    c = results["config"]
    lines = [
        f"# query-distribution{' (quick)' if results.get('quick') else ''}",
        "",
        results["description"],
        "",
        f"Victim {c['victim']['arch']} on {c['victim']['dataset']} (accuracy "
        f"{results['victim_accuracy']:.4f} on the held-out half of its test split); "
        f"{c['budget']} queries each; filter: `{c['filter']['backbone']}` trained on "
        f"{c['filter']['in_dataset']} against {c['filter']['out_dataset']}, flagged queries "
        f"answered with a shuffled vector; seed {results['seed']}.",
        "",
        "| attacker | filter | flagged | knockoff accuracy | recovery | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['source']} | {'on' if r['filter'] else 'off'} | {r['flagged']:.3f} | "
            f"{r['knockoff_accuracy']:.3f} | {r['recovery']:.3f} | {r['agreement']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    plt = pyplot()
    import numpy as np

    rows = results["rows"]
    x = np.arange(len(SOURCES))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, filtered in enumerate((False, True)):
        part = {r["source"]: r for r in rows if r["filter"] == filtered}
        label = "filter on" if filtered else "no filter"
        axes[0].bar(x + (i - 0.5) * 0.4, [part[s]["recovery"] for s in SOURCES], 0.4, label=label)
        axes[1].bar(x + (i - 0.5) * 0.4, [part[s]["flagged"] for s in SOURCES], 0.4, label=label)
    for ax, title in zip(axes, ("knockoff recovery", "queries flagged by the filter"),
                         strict=True):  # fmt: skip
        ax.set_xticks(x, SOURCES)
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"query-distribution at {results['config']['budget']} queries")
    return save_figure(fig, path)


register(
    Experiment(
        name="query-distribution",
        description="natural, noise, JBDA and in-distribution queries, with and without the "
        "OOD filter",
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
