"""The registry of experiments: a name, a one-line description, and a function that runs it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UnknownNameError

MODULES = (
    "granularity",
    "budget",
    "hard_labels",
    "defenses",
    "query_distribution",
    "ood_defense",
    "architecture",
)
"""One module per experiment under scenarios/experiments/; importing it registers it."""


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    run: Callable[..., dict]
    """run(out: Path, quick: bool, say) -> the results (also written to out/results.json)."""
    figure: str = "agreement"
    """The results column the PNG plots."""


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def _load_all() -> None:
    for module in MODULES:
        importlib.import_module(f"scenarios.experiments.{module}")


def experiment_names() -> list[str]:
    _load_all()
    return sorted(EXPERIMENTS)


def get(name: str) -> Experiment:
    _load_all()
    if name not in EXPERIMENTS:
        raise UnknownNameError("experiment", name, sorted(EXPERIMENTS))
    return EXPERIMENTS[name]


def default_out(name: str) -> Path:
    return Path("results") / name
