"""How much each output granularity gives the attacker, at the same budget (Atli et al.).

One victim, one query pool, the same images in the same order for every setting; only what
the API discloses changes: all probabilities, top-5, top-1 with its probability, the label
only, and probabilities rounded to 2 and to 1 decimals. Each setting is served by the real
service on loopback and queried over HTTP; each transfer set trains a fresh knockoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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


@dataclass(frozen=True)
class Setting:
    name: str
    output: str
    top_k: int | None = None
    round_decimals: int | None = None

    def env(self) -> dict[str, str]:
        env = {"VICTIM_OUTPUT": self.output}
        if self.top_k is not None:
            env["VICTIM_TOP_K"] = str(self.top_k)
        if self.round_decimals is not None:
            env["VICTIM_ROUND_DECIMALS"] = str(self.round_decimals)
        return env


SETTINGS = (
    Setting("probabilities", "probs"),
    Setting("top-5", "topk", top_k=5),
    Setting("top-1 + probability", "topk", top_k=1),
    Setting("label only", "label"),
    Setting("rounded to 2 decimals", "probs", round_decimals=2),
    Setting("rounded to 1 decimal", "probs", round_decimals=1),
)


@dataclass(frozen=True)
class GranularityConfig:
    """The default scale; 5,000 queries per setting keep six cnn9 knockoffs within the hour
    on the shared 2 cores."""

    victim: VictimSpec = scale.VICTIM
    query: QuerySpec = QuerySpec(scale.POOL, None, 5_000)
    knockoff: KnockoffOptions = field(default_factory=scale.knockoff)


FULL = GranularityConfig()
QUICK = GranularityConfig(
    victim=scale.QUICK_VICTIM,
    query=QuerySpec(scale.QUICK_POOL, 1_000, 600),
    knockoff=scale.quick_knockoff(),
)
"""Embedded data only (digits victim, natural pool), about a minute per setting on 2 cores."""
PAPERS = GranularityConfig(
    victim=scale.PAPERS_VICTIM,
    query=QuerySpec(scale.POOL, None, 10_000),
    knockoff=scale.papers_knockoff(),
)
"""ResNet-34 victim and knockoff at 64 px, 10,000 queries per setting (a GPU's work)."""


def run(
    out: Path, quick: bool = False, say: Callable[[str], object] = print,
    config: GranularityConfig | None = None,
) -> dict:  # fmt: skip
    """Every setting at the same budget; writes out/results.json, results.md, results.png."""
    config = config or (QUICK if quick else FULL)
    start = time.perf_counter()
    victim_path = cached_victim(config.victim, say)
    options = replace(config.knockoff, seed=config.query.seed)
    rows = []
    for setting in SETTINGS:
        t = time.perf_counter()
        say(f"  {setting.name}")
        db = cached_transfer_set(config.victim, setting.env(), config.query, say)
        e = knockoff_row(db, config.query.budget, options, config.victim)
        rows.append({"setting": setting.name, **asdict(setting), **e,
                     "seconds": time.perf_counter() - t})  # fmt: skip
        say(f"  {setting.name}: agreement {e['agreement']:.3f}, recovery {e['recovery']:.3f}")
    results = {
        **header("granularity", __doc__, quick=quick, seed=config.query.seed, config=asdict(config),
                 victim_checkpoint=victim_path, victim_accuracy=e["victim_accuracy"]),
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    publish(results, out)
    return results


register(
    Experiment(
        name="granularity",
        description="what each output granularity gives the attacker at one budget",
        run=run,
        full=FULL,
        quick=QUICK,
        papers=PAPERS,
        set_elsewhere={
            "knockoff.seed": "the knockoffs take the queries' seed (set query.seed=...)",
        },
    )
)
