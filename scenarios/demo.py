"""The main job, end to end and offline: victim -> live API -> queries -> knockoff -> report.

`scenarios demo` trains (and caches) a victim, serves it on loopback with the real service,
queries it with the attacker's pool through HTTP, trains a knockoff from the SQLite transfer
set, evaluates it against the victim on the victim's test set, and writes a report.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import get_args

from attacker.defaults import KNOCKOFF
from attacker.evaluate import evaluate, markdown_table, save_outputs
from attacker.query import QueryConfig, run_query
from attacker.strategies import STRATEGIES
from attacker.train import KnockoffOptions, check_keep, train_knockoff
from attacker.transfer import load_transfer_set
from scenarios.experiments.cache import artefact_key
from shared.checkpoint import ModelCard, load_checkpoint
from shared.datasets import check_dataset
from shared.errors import TestbedError, check_choice
from shared.models import check_arch
from shared.schemas import OutputMode
from victim_service.launch import service_process
from victim_service.recipes import CIFAR10, DIGITS
from victim_service.train import train_victim

DEMO_KNOCKOFF_EPOCHS = 15
"""The demo's own documented choice (the attacker's CLI default is longer): a 1-minute demo."""


@dataclass(frozen=True)
class DemoConfig:
    """One demo run; the victim's training comes from its dataset's recipe."""

    victim_dataset: str = "digits"
    victim_arch: str = DIGITS.arch
    victim_epochs: int = DIGITS.epochs
    victim_batch_size: int = DIGITS.batch_size
    victim_lr: float = DIGITS.lr
    pool: str = "natural"
    pool_size: int | None = 10_000
    budget: int = 5_000
    output: str = "probs"
    top_k: int = 3
    strategy: str = "random"
    knockoff_arch: str = KNOCKOFF.arch
    knockoff_epochs: int = DEMO_KNOCKOFF_EPOCHS
    knockoff_batch_size: int = KNOCKOFF.batch_size
    knockoff_lr: float = KNOCKOFF.lr
    knockoff_keep: str = KNOCKOFF.keep
    balance: bool = False
    seed: int = 0
    concurrency: int = 8
    batch_size: int = 32
    out: Path = Path("runs/demo")

    def __post_init__(self) -> None:
        """Every name and count is checked before a victim is trained or a query sent: a typo
        in the knockoff's architecture used to surface after both (minutes at the realistic
        scale)."""
        check_dataset(self.victim_dataset)
        check_dataset(self.pool)
        check_arch(self.victim_arch)
        check_arch(self.knockoff_arch)
        check_choice(self.output, get_args(OutputMode), "demo: --output")
        check_choice(self.strategy, STRATEGIES, "demo: --strategy")
        check_keep(self.knockoff_keep, "demo: --knockoff-keep")
        counts = {"budget": self.budget, "knockoff-epochs": self.knockoff_epochs,
                  "top-k": self.top_k, "pool-size": self.pool_size}  # fmt: skip
        for option, value in counts.items():
            if value is not None and value < 1:
                raise TestbedError(f"demo: --{option} must be at least 1, not {value}")


PRESETS: dict[str, DemoConfig] = {
    "default": DemoConfig(),
    "realistic": DemoConfig(
        victim_dataset="cifar10-jpeg",
        victim_arch=CIFAR10.arch,
        victim_epochs=CIFAR10.epochs,
        victim_batch_size=CIFAR10.batch_size,
        victim_lr=CIFAR10.lr,
        pool="tiny-imagenet-attacker",
        pool_size=None,
        budget=60_000,
        knockoff_arch="cnn9",
        knockoff_epochs=20,
        knockoff_batch_size=256,
        knockoff_lr=0.2,
        out=Path("runs/demo-realistic"),
    ),
}

ADVERSARY_KNOWLEDGE = {
    "victim data": "none: queries come from the attacker's own pool, another distribution",
    "victim architecture": "none: the knockoff architecture is the attacker's own choice",
    "class semantics": "none: only the number of outputs (from /v1/model) and answer indices",
    "input size": "disclosed by the API (/v1/model), used to resize queries",
    "pool labels": "the attacker's own pool labels (used only by the adaptive strategy)",
    "balancing": "uses only the victim's answers (Copycat)",
}


def victim_cache_path(config: DemoConfig, cache_dir: Path = Path("runs/victims")) -> Path:
    """The cached victim's file, named by its dataset, architecture, epochs and seed for people,
    and by the key of its whole recipe at the victims' revision (`scenarios.experiments.cache`):
    until 2026-12-07 the name alone chose it, so a victim trained with another batch size or
    rate, or by training code since changed, was reused as if it were this recipe's."""
    recipe = {"dataset": config.victim_dataset, "arch": config.victim_arch,
              "epochs": config.victim_epochs, "batch_size": config.victim_batch_size,
              "lr": config.victim_lr, "seed": config.seed}  # fmt: skip
    key = artefact_key("victims", recipe)[:8]
    name = f"{config.victim_dataset}-{config.victim_arch}-e{config.victim_epochs}-s{config.seed}"
    return (cache_dir / f"{name}-{key}.pt").resolve()


def cached_victim(
    config: DemoConfig, cache_dir: Path = Path("runs/victims")
) -> tuple[Path, ModelCard]:
    """Train the victim once per recipe (`victim_cache_path`) and reuse its checkpoint."""
    path = victim_cache_path(config, cache_dir)
    if path.exists():
        try:
            return path, load_checkpoint(path)[1]
        except TestbedError:
            path.unlink()
    result = train_victim(
        config.victim_dataset, config.victim_arch, path, epochs=config.victim_epochs,
        batch_size=config.victim_batch_size, lr=config.victim_lr, seed=config.seed,
    )  # fmt: skip
    return path, result.card


def run_demo(config: DemoConfig, say=print) -> dict:
    """Run the whole attack once; returns (and writes) the report."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    out = config.out
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    victim, card = cached_victim(config)
    timings["victim"] = time.perf_counter() - t
    say(f"[1/4] victim {card.arch} on {card.dataset}: test accuracy {card.test_accuracy:.4f}")

    db = out / "transfer.sqlite"
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    env = {"VICTIM_CHECKPOINT": str(victim), "VICTIM_OUTPUT": config.output,
           "VICTIM_TOP_K": str(config.top_k), "VICTIM_MAX_IMAGES": "64"}  # fmt: skip
    t = time.perf_counter()
    with service_process(env) as (url, _):
        say(f"[2/4] victim service up at {url} (output: {config.output}); querying...")
        result = run_query(
            QueryConfig(
                url=url, pool=config.pool, budget=config.budget, db=db,
                strategy=config.strategy, seed=config.seed, pool_size=config.pool_size,
                concurrency=config.concurrency, batch_size=config.batch_size,
            )
        )  # fmt: skip
    timings["query"] = time.perf_counter() - t
    say(f"      {result.answered} answers in {timings['query']:.0f} s "
        f"({result.images_per_s:.0f} images/s) -> {db}")  # fmt: skip

    t = time.perf_counter()
    transfer = load_transfer_set(db, result.run_id)
    options = KnockoffOptions(
        arch=config.knockoff_arch, epochs=config.knockoff_epochs,
        batch_size=config.knockoff_batch_size, lr=config.knockoff_lr,
        balance=config.balance, seed=config.seed, keep=config.knockoff_keep,
    )  # fmt: skip
    knockoff_path = out / "knockoff.pt"
    _, trained = train_knockoff(transfer, options, knockoff_path)
    timings["knockoff"] = time.perf_counter() - t
    say(f"[3/4] knockoff {config.knockoff_arch} trained in {timings['knockoff']:.0f} s "
        f"(validation agreement {trained.val_agreement:.4f})")  # fmt: skip

    t = time.perf_counter()
    evaluation = evaluate(knockoff_path, victim, config.victim_dataset, "test")
    save_outputs(evaluation, out)
    timings["evaluate"] = time.perf_counter() - t
    say("[4/4] evaluation on the victim's test set:\n")
    say(markdown_table(evaluation))

    report = {
        "victim_accuracy": evaluation["victim_accuracy"],
        "knockoff_accuracy": evaluation["knockoff_accuracy"],
        "recovery": evaluation["recovery"],
        "agreement": evaluation["agreement"],
        "knockoff_macro_accuracy": evaluation["knockoff_macro_accuracy"],
        "queries": result.answered,
        "seconds": time.perf_counter() - start,
        "seconds_by_phase": timings,
        "data": {
            "victim_dataset": config.victim_dataset,
            "victim_checkpoint": str(victim),
            "pool": config.pool,
            "pool_size": config.pool_size,
            "transfer_set": str(db),
            "run_id": result.run_id,
            "output": config.output,
            "strategy": config.strategy,
        },
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "knockoff": {
            "checkpoint": str(knockoff_path),
            "best_epoch": trained.best_epoch,
            "val_agreement": trained.val_agreement,
        },  # fmt: skip
        "adversary_knowledge": ADVERSARY_KNOWLEDGE,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"\nrecovery {report['recovery']:.3f}, agreement {report['agreement']:.3f}, "
        f"{report['queries']} queries, {report['seconds']:.0f} s -> {out}/report.json")  # fmt: skip
    return report


def preset(name: str, **overrides) -> DemoConfig:
    if name not in PRESETS:
        raise TestbedError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
