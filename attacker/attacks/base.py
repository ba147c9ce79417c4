"""What every attack by name shares: validated parameters, the victim it talks to, and
`extract()`, which queries (resumably) and then trains a fresh knockoff on the transfer set.

In the spirit of ART's `ExtractionAttack.extract()`: an attack is one object built from its
parameters (validated once, by its pydantic model, in `make_attack`); nothing runs in `__init__`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from attacker.client import RetryPolicy
from attacker.defaults import KNOCKOFF
from attacker.runs import QueryConfig, QueryResult

if TYPE_CHECKING:
    from attacker.train import KnockoffOptions, KnockoffResult
    from attacker.transfer import TransferSet


class AttackParams(BaseModel):
    """Parameters every attack takes: its seed and how its knockoff is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    arch: str = KNOCKOFF.arch
    epochs: int = Field(KNOCKOFF.epochs, ge=1)
    batch_size: int = Field(KNOCKOFF.batch_size, ge=1)
    lr: float = Field(KNOCKOFF.lr, gt=0)
    weights: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class Target:
    """The prediction API under attack and the transfer set the attack writes."""

    url: str
    db: Path = Path("runs/transfer.sqlite")
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 16
    batch_size: int = 8
    timeout_s: float = 30.0
    retries: int = 10
    limit: int | None = None
    """Stop after this many new answers (the run stays resumable)."""
    progress: bool = True

    def query_config(self, **run: Any) -> QueryConfig:
        """A `QueryConfig` for this target and the given run identity (pool, budget, ...)."""
        return QueryConfig(
            url=self.url, db=self.db, api_key=self.api_key, concurrency=self.concurrency,
            batch_size=self.batch_size, timeout_s=self.timeout_s, limit=self.limit,
            retry=RetryPolicy(max_retries=self.retries), progress=self.progress, **run,
        )  # fmt: skip


@dataclass
class Extraction:
    """What `extract` did: the query session and, once the budget is answered, the knockoff."""

    attack: str
    query: QueryResult
    knockoff: KnockoffResult | None = None


class Attack(ABC):
    """An extraction attack by name: `query` fills the transfer set, `extract` also trains."""

    name: ClassVar[str]
    Params: ClassVar[type[AttackParams]] = AttackParams
    hard_labels: ClassVar[bool] = False
    """Train on the victim's top label only, whatever the API disclosed (Copycat)."""
    balance: ClassVar[bool] = False

    def __init__(self, params: AttackParams) -> None:
        self.params = params

    @abstractmethod
    def query(self, target: Target) -> QueryResult:
        """Query the API (or resume the unfinished run) until the budget is answered."""

    def knockoff_options(self, progress: bool = True) -> KnockoffOptions:
        from attacker.train import KnockoffOptions

        p = self.params
        return KnockoffOptions(
            arch=p.arch, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weights=p.weights,
            balance=self.balance, seed=p.seed, device=p.device, progress=progress,
        )  # fmt: skip

    def transfer_set(self, target: Target, run_id: int) -> TransferSet:
        from attacker.transfer import load_transfer_set

        return load_transfer_set(target.db, run_id, hard_labels=self.hard_labels)

    def extract(self, target: Target, out: Path | None = None) -> Extraction:
        """Query, then train a fresh knockoff on every answer (written to `out` if given)."""
        from attacker.train import train_knockoff

        result = Extraction(self.name, self.query(target))
        if result.query.complete:
            transfer = self.transfer_set(target, result.query.run_id)
            _, result.knockoff = train_knockoff(
                transfer, self.knockoff_options(target.progress), out
            )
        return result
