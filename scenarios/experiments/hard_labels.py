"""Copycat CNN's attack through a label-only API, with and without its class balancing.

Copycat (Correia-Silva et al.) queries natural random images, keeps only the victim's label and
over- or under-samples each stolen class to one count before training: natural images from
another domain fall unevenly on the victim's classes. Here the service discloses the label only;
the same transfer set trains a knockoff balanced and one not, at each budget, and a knockoff on
the full probabilities (Knockoff Nets) at the same budget is the reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from attacker.attacks.copycat import Copycat
from attacker.train import KnockoffOptions
from attacker.transfer import load_transfer_set
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

LABELS = {"VICTIM_OUTPUT": "label"}
PROBABILITIES = {"VICTIM_OUTPUT": "probs"}


@dataclass(frozen=True)
class HardLabelsConfig:
    victim: VictimSpec = scale.VICTIM
    pool: str = scale.POOL
    pool_size: int | None = None
    budgets: tuple[int, ...] = (1_000, 5_000)
    seed: int = 0
    knockoff: KnockoffOptions = field(default_factory=scale.knockoff)


FULL = HardLabelsConfig()
QUICK = HardLabelsConfig(
    victim=scale.QUICK_VICTIM,
    pool=scale.QUICK_POOL,
    pool_size=1_000,
    budgets=(200, 600),
    knockoff=scale.quick_knockoff(),
)
"""Embedded data only (digits victim, natural pool)."""


def label_spread(labels: np.ndarray, num_classes: int) -> dict:
    """How unevenly the stolen labels fall: normalized entropy, largest and smallest share."""
    counts = np.bincount(labels, minlength=num_classes)
    p = counts / counts.sum()
    nonzero = p[p > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(num_classes))
    return {"label_entropy": entropy, "top_class_share": float(p.max()),
            "bottom_class_share": float(p.min())}  # fmt: skip


def run(
    out: Path, quick: bool = False, say: Callable[[str], object] = print,
    config: HardLabelsConfig | None = None,
) -> dict:  # fmt: skip
    """Balanced and unbalanced Copycat, and the probabilities reference, at every budget."""
    config = config or (QUICK if quick else FULL)
    start = time.perf_counter()
    victim_path = cached_victim(config.victim, say)
    query = QuerySpec(config.pool, config.pool_size, max(config.budgets), seed=config.seed)
    labels_db = cached_transfer_set(config.victim, LABELS, query, say)
    probs_db = cached_transfer_set(config.victim, PROBABILITIES, query, say)
    options = replace(config.knockoff, seed=config.seed)
    rows = []
    for budget in sorted(config.budgets):
        stolen = load_transfer_set(labels_db, budget=budget, hard_labels=Copycat.hard_labels)
        spread = label_spread(stolen.labels.numpy(), stolen.num_classes)
        variants = (
            ("Copycat, balanced", labels_db, Copycat.balance),
            ("Copycat, not balanced", labels_db, not Copycat.balance),
            ("probabilities (Knockoff Nets)", probs_db, False),
        )
        for name, db, balance in variants:
            hard = db == labels_db and Copycat.hard_labels
            e = knockoff_row(db, budget, replace(options, balance=balance), config.victim,
                             hard_labels=hard)  # fmt: skip
            rows.append({"setting": name, "balance": balance, "hard_labels": hard, **e,
                         **spread})  # fmt: skip
            say(f"  {name} at {budget}: recovery {e['recovery']:.3f}, "
                f"macro {e['macro_recovery']:.3f}")  # fmt: skip
    results = {
        **header("hard-labels", __doc__, quick=quick, seed=config.seed, config=asdict(config),
                 victim_checkpoint=victim_path, victim_accuracy=rows[0]["victim_accuracy"]),
        "rows": rows,
        "columns": [
            "setting",
            "queries",
            "knockoff_accuracy",
            "recovery",
            "macro_recovery",
            "agreement",
            "label_entropy",
            "top_class_share",
        ],  # fmt: skip
        "plot": {
            "kind": "lines",
            "x": "queries",
            "y": "recovery",
            "series": "setting",
            "logx": True,
        },  # fmt: skip
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    publish(results, out)
    return results


register(
    Experiment(
        name="hard-labels",
        description="Copycat through a label-only API, with and without class balancing",
        run=run,
        full=FULL,
        quick=QUICK,
        set_elsewhere={
            "knockoff.seed": "the knockoffs take the run's seed (set seed=...)",
            "knockoff.balance": "each budget trains a balanced knockoff and one not",
        },
    )
)
