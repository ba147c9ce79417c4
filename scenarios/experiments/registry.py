"""The registry of experiments: a name, a one-line description, and a function that runs it."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scenarios.experiments import report
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
    """run(out: Path, quick: bool, say, config=None) -> the results (also written to
    out/results.json); `config` replaces the default or quick configuration."""
    full: object = None
    quick: object = None
    """The default-scale and quick configurations (frozen dataclasses), for overrides."""
    papers: object = None
    """The papers' scale (scale.PAPERS_VICTIM, a GPU's work), where the experiment has one."""
    markdown: Callable[[dict], str] = report.markdown
    plot: Callable[[dict, Path], Path] = report.plot
    """How results.json becomes results.md and results.png (default: one table, one figure)."""
    merge: Callable[[list[dict]], dict] | None = None
    """One results dict from several runs' (a grid run in pieces); None: not mergeable."""
    set_elsewhere: Mapping[str, str] = field(default_factory=dict)
    """Configuration fields the experiment sets itself (the knockoff's seed from the run's),
    with where to set them instead: `--set` refuses them, where it would change nothing."""

    def config_at(self, scale: str) -> object:
        """The configuration of a named scale: default, quick or papers."""
        configs = {"default": self.full, "quick": self.quick, "papers": self.papers}
        if configs.get(scale) is None:
            known = sorted(k for k, v in configs.items() if v is not None)
            raise UnknownNameError(f"scale of {self.name}", scale, known)
        return configs[scale]

    def render(self, results_json: Path) -> tuple[Path, Path]:
        """results.md and results.png again from results.json alone."""
        return report.render(results_json, self.name, self.markdown, self.plot)


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
