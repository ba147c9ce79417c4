"""The steps every experiment shares, each cached by its configuration: the victim of a recipe,
a transfer set queried from the live service, and a knockoff trained on it with its evaluation.

An experiment says what differs between its rows (the service's settings, the strategy, the
budget, the knockoff) and calls these; a step that another experiment (or an earlier run)
already made costs nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from attacker.attacks import Target, make_attack
from attacker.evaluate import evaluate
from attacker.query import QueryConfig, run_query
from attacker.strategies import AdaptiveConfig
from attacker.train import KnockoffOptions, train_knockoff
from attacker.transfer import answers_digest, load_transfer_set
from scenarios.experiments.cache import artefact_key, cached_path, config_hash, making
from victim_service.launch import preloaded_service
from victim_service.recipes import recipe_for
from victim_service.train import train_victim

Say = Callable[[str], object]
SERVICE_READY_S = 600.0
"""The service imports torch and loads its model before /readyz: minutes on a busy machine."""


@dataclass(frozen=True)
class VictimSpec:
    """A victim's training recipe: its cache key."""

    dataset: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    input_size: int = 32
    """The side in pixels the victim is trained and served at (the papers' scale: 64)."""

    @classmethod
    def of(cls, dataset: str, seed: int = 0, **overrides: object) -> VictimSpec:
        """The dataset's recipe (victim_service/recipes.py), with any field overridden."""
        r = recipe_for(dataset)
        spec = cls(dataset, r.arch, r.epochs, r.batch_size, r.lr, seed, r.input_size)
        return replace(spec, **overrides)  # type: ignore[arg-type]


@dataclass(frozen=True)
class QuerySpec:
    """What the attacker asks: pool, budget, strategy, seed (and the bandit's knobs)."""

    pool: str
    pool_size: int | None
    budget: int
    strategy: str = "random"
    seed: int = 0
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)

    def key(self) -> dict:
        key = asdict(self)
        if self.strategy != "adaptive":
            key.pop("adaptive")  # the bandit's knobs do not change a random plan
        return key


def cached_victim(spec: VictimSpec, say: Say = lambda _: None) -> Path:
    """The victim's checkpoint, trained once per recipe."""
    path = cached_path("victims", asdict(spec), ".pt")
    with making(path):
        if not path.exists():
            say(
                f"  training the victim {spec.arch} on {spec.dataset} ({spec.epochs} epochs, "
                f"{spec.input_size} px)"
            )
            train_victim(
                spec.dataset, spec.arch, path, epochs=spec.epochs, batch_size=spec.batch_size,
                lr=spec.lr, input_size=spec.input_size, seed=spec.seed, progress=False,
            )  # fmt: skip
    return path


def _cached_set(
    spec: dict, victim: VictimSpec, env: Mapping[str, str], ask: Callable[[str, Path], object],
    say: Say,
) -> Path:  # fmt: skip
    """The transfer set `ask(url, db)` writes against the victim served with `env`, made once
    per `spec` (a half-written one from an interrupted run is started again)."""
    db = cached_path("transfer", spec, ".sqlite")
    done = db.with_suffix(".done")
    with making(db):
        if done.exists():
            return db
        for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            stale.unlink(missing_ok=True)
        service_env = {"VICTIM_CHECKPOINT": str(cached_victim(victim, say)),
                       "VICTIM_MAX_IMAGES": "64", **env}  # fmt: skip
        with preloaded_service(service_env, ready_timeout=SERVICE_READY_S) as url:
            ask(url, db)
        done.write_text("complete\n")
    return db


def cached_transfer_set(
    victim: VictimSpec, env: Mapping[str, str], query: QuerySpec, say: Say = lambda _: None
) -> Path:
    """The SQLite transfer set of `query` against the victim served with `env` (the service's
    VICTIM_* settings: output, defenses), queried over HTTP once per configuration."""
    spec = {
        "victim": artefact_key("victims", asdict(victim)),
        "env": dict(env),
        "query": query.key(),
    }

    def ask(url: str, db: Path) -> None:
        say(f"  querying {url}: {query.budget} images, {query.strategy}, seed {query.seed}")
        run_query(
            QueryConfig(url=url, pool=query.pool, budget=query.budget, db=db,
                        strategy=query.strategy, seed=query.seed,
                        pool_size=query.pool_size, adaptive=query.adaptive,
                        concurrency=8, batch_size=32, progress=False)
        )  # fmt: skip

    return _cached_set(spec, victim, env, ask, say)


def cached_attack_set(
    victim: VictimSpec, env: Mapping[str, str], attack: str, params: dict,
    say: Say = lambda _: None,
) -> Path:  # fmt: skip
    """The transfer set of a registered attack (`attacker.attacks`, e.g. JBDA, which makes its
    own images) against the victim served with `env`, queried once per configuration."""
    spec = {"victim": artefact_key("victims", asdict(victim)), "env": dict(env), "attack": attack,
            "params": params}  # fmt: skip

    def ask(url: str, db: Path) -> None:
        say(f"  querying {url}: {attack} {params}")
        make_attack(attack, params).query(
            Target(url=url, db=db, concurrency=8, batch_size=32, progress=False)
        )

    return _cached_set(spec, victim, env, ask, say)


def knockoff_row(
    db: Path,
    budget: int,
    options: KnockoffOptions,
    victim: VictimSpec,
    *,
    hard_labels: bool = False,
    test_data: str | None = None,
) -> dict:
    """A fresh knockoff on the first `budget` answers of `db`, evaluated against the victim on
    the test split of `test_data` (default: the victim's dataset; both cached): knockoff and
    victim accuracy, recovery, agreement, seconds. The knockoff is cached by the answers it
    trains on (`answers_digest`), not by the run that asked them: runs that obtained exactly
    the same answers share one knockoff, as `train_knockoff` makes them equal."""
    spec = {"answers": answers_digest(db, budget=budget), "budget": budget,
            "victim": artefact_key("victims", asdict(victim)), "hard_labels": hard_labels,
            "options": asdict(replace(options, progress=False))}  # fmt: skip
    knockoff = cached_path("knockoffs", spec, ".pt")
    scores = knockoff.with_suffix(".eval.json")
    if test_data is not None:  # scored on other data: its own file beside the same knockoff
        scores = knockoff.with_suffix(f".eval-{config_hash({'test_data': test_data})}.json")
    with making(knockoff):
        if scores.exists():
            return json.loads(scores.read_text())
        start = time.perf_counter()
        if not knockoff.exists():
            transfer = load_transfer_set(db, budget=budget, hard_labels=hard_labels)
            train_knockoff(transfer, replace(options, progress=False), knockoff)
        e = evaluate(knockoff, cached_victim(victim), test_data or victim.dataset, "test")
        row = {key: e[key] for key in ("victim_accuracy", "knockoff_accuracy", "recovery",
                                       "agreement", "macro_recovery")}  # fmt: skip
        row |= {"queries": budget, "seconds": time.perf_counter() - start}
        scores.write_text(json.dumps(row, indent=2) + "\n")
    return row
