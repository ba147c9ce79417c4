"""How much each output granularity gives the attacker, at the same budget (Atli et al.).

One victim, one query pool, the same images in the same order for every setting; only what
the API discloses changes: all probabilities, top-5, top-1 with its probability, the label
only, and probabilities rounded to 2 and to 1 decimals. Each setting is served by the real
service on loopback and queried over HTTP; each transfer set trains a fresh knockoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from attacker.defaults import KNOCKOFF
from attacker.evaluate import evaluate
from attacker.query import QueryConfig, run_query
from attacker.train import KnockoffOptions, train_knockoff
from attacker.transfer import load_transfer_set
from scenarios.demo import DEMO_KNOCKOFF_EPOCHS
from scenarios.experiments.cache import cached_path, config_hash
from scenarios.experiments.registry import Experiment, register
from scenarios.experiments.report import render, write_results
from shared.errors import TestbedError
from victim_service.launch import service_process
from victim_service.recipes import DIGITS
from victim_service.train import train_victim


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
    victim_dataset: str = "digits"
    victim_arch: str = DIGITS.arch
    victim_epochs: int = DIGITS.epochs
    victim_batch_size: int = DIGITS.batch_size
    victim_lr: float = DIGITS.lr
    pool: str = "natural"
    pool_size: int | None = 10_000
    budget: int = 5_000
    knockoff_arch: str = KNOCKOFF.arch
    knockoff_epochs: int = DEMO_KNOCKOFF_EPOCHS
    knockoff_batch_size: int = KNOCKOFF.batch_size
    knockoff_lr: float = KNOCKOFF.lr
    seed: int = 0


FULL = GranularityConfig()
QUICK = replace(
    FULL, victim_epochs=8, pool_size=1_000, budget=600, knockoff_epochs=6, knockoff_batch_size=32
)
"""Embedded data only (digits victim, natural pool), about a minute per setting on 2 cores."""


def victim_recipe(config: GranularityConfig) -> dict:
    """What the victim's cache key is made of."""
    return {"dataset": config.victim_dataset, "arch": config.victim_arch,
            "epochs": config.victim_epochs, "batch_size": config.victim_batch_size,
            "lr": config.victim_lr, "seed": config.seed}  # fmt: skip


def _victim(config: GranularityConfig) -> tuple[Path, dict]:
    recipe = victim_recipe(config)
    path = cached_path("victims", recipe, ".pt")
    if not path.exists():
        train_victim(
            config.victim_dataset, config.victim_arch, path, epochs=config.victim_epochs,
            batch_size=config.victim_batch_size, lr=config.victim_lr, seed=config.seed,
            progress=False,
        )  # fmt: skip
    return path, recipe


def _transfer_set(config: GranularityConfig, victim: dict, setting: Setting, say) -> Path:
    spec = {"victim": config_hash(victim), "pool": config.pool, "pool_size": config.pool_size,
            "budget": config.budget, "seed": config.seed, "strategy": "random",
            "setting": asdict(setting)}  # fmt: skip
    db = cached_path("transfer", spec, ".sqlite")
    try:
        load_transfer_set(db, budget=config.budget)
        return db
    except TestbedError:
        for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            stale.unlink(missing_ok=True)
    env = {"VICTIM_CHECKPOINT": str(_victim(config)[0]), "VICTIM_MAX_IMAGES": "64",
           **setting.env()}  # fmt: skip
    with service_process(env) as (url, _):
        say(f"  {setting.name}: querying {url} ({config.budget} images)")
        run_query(
            QueryConfig(url=url, pool=config.pool, budget=config.budget, db=db,
                        seed=config.seed, pool_size=config.pool_size, concurrency=8,
                        batch_size=32, progress=False)
        )  # fmt: skip
    return db


def run(
    out: Path, quick: bool = False, say: Callable[[str], object] = print,
    config: GranularityConfig | None = None,
) -> dict:  # fmt: skip
    """Every setting at the same budget; writes out/results.json, results.md, results.png."""
    config = config or (QUICK if quick else FULL)
    start = time.perf_counter()
    victim_path, victim = _victim(config)
    rows = []
    for setting in SETTINGS:
        t = time.perf_counter()
        db = _transfer_set(config, victim, setting, say)
        options = KnockoffOptions(
            arch=config.knockoff_arch, epochs=config.knockoff_epochs,
            batch_size=config.knockoff_batch_size, lr=config.knockoff_lr, seed=config.seed,
            progress=False,
        )  # fmt: skip
        spec = {"transfer": db.stem, "options": asdict(options)}
        knockoff = cached_path("knockoffs", spec, ".pt")
        if not knockoff.exists():
            train_knockoff(load_transfer_set(db, budget=config.budget), options, knockoff)
        e = evaluate(knockoff, victim_path, config.victim_dataset, "test")
        rows.append({"setting": setting.name, **asdict(setting), "queries": config.budget,
                     "knockoff_accuracy": e["knockoff_accuracy"], "recovery": e["recovery"],
                     "agreement": e["agreement"], "seconds": time.perf_counter() - t})  # fmt: skip
        say(f"  {setting.name}: agreement {e['agreement']:.3f}, recovery {e['recovery']:.3f}")
    results = {
        "experiment": "granularity",
        "description": (__doc__ or "").strip().splitlines()[0],
        "quick": quick,
        "seed": config.seed,
        "config": asdict(config),
        "victim_checkpoint": str(victim_path),
        "victim_accuracy": e["victim_accuracy"],
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    render(write_results(results, out))
    return results


register(
    Experiment(
        name="granularity",
        description="what each output granularity gives the attacker at one budget",
        run=run,
    )
)
