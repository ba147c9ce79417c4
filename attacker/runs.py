"""Run identity: what `attacker query` takes (validated once), which stored run a command
continues, and the run row a new one starts with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from attacker.client import PROTOCOLS, ClientStats, RetryPolicy
from attacker.sources import IMAGE_FORMAT, V2_IMAGE_FORMAT
from attacker.store import Run
from attacker.strategies import STRATEGIES, AdaptiveConfig
from shared.datasets import ImageDataset, load_dataset
from shared.errors import TestbedError
from shared.schemas import ModelInfo


@dataclass(frozen=True)
class QueryConfig:
    """Everything `attacker query` takes; validated here and nowhere else."""

    url: str
    pool: str
    budget: int
    db: Path = Path("runs/transfer.sqlite")
    strategy: str = "random"
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 16
    batch_size: int = 8
    pool_size: int | None = None
    """Images in a generated pool (natural, noise); None = the dataset's default."""
    pool_image_size: int | None = None
    """Side of a generated pool's images; None = the dataset's default."""
    resize_to_input: bool = True
    """Send images at the API's disclosed input size (less bandwidth) instead of native size."""
    limit: int | None = None
    """Stop after this many new answers in this session (the run stays resumable)."""
    commit_every: int = 256
    commit_interval_s: float = 1.0
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    progress: bool = True
    protocol: str = "v1"
    """v1 (this testbed's /v1/predict) or v2 (the Open Inference Protocol)."""
    model: str = "victim"
    """v2: the model's name on the server."""
    binary: bool = True
    """v2: tensors through the binary extension (else JSON `data`)."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise TestbedError(
                f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}"
            )
        if self.strategy not in STRATEGIES:
            raise TestbedError(
                f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}"
            )
        checks = {
            "budget": self.budget,
            "concurrency": self.concurrency,
            "batch size": self.batch_size,
            "commit_every": self.commit_every,
        }
        for name, value in checks.items():
            if value < 1:
                raise TestbedError(f"the {name} must be at least 1 (got {value})")
        if self.limit is not None and self.limit < 1:
            raise TestbedError("the limit must be at least 1 image")
        if self.pool_size is not None and self.pool_size < 1:
            raise TestbedError("the pool size must be at least 1")
        if not self.timeout_s > 0:
            raise TestbedError(f"the timeout must be above 0 seconds (got {self.timeout_s})")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def victim_url(self) -> str:
        """The endpoint a run is tied to: the base URL (v1) or the v2 model's URL."""
        if self.protocol == "v2":
            return f"{self.base_url}/v2/models/{self.model}"
        return self.base_url

    @property
    def image_format(self) -> str:
        return V2_IMAGE_FORMAT if self.protocol == "v2" else IMAGE_FORMAT


@dataclass
class QueryResult:
    """What one `query` session did; `images_per_s` is its sustained querying rate."""

    run_id: int
    db: Path
    budget: int
    answered: int
    """Answers in the database for this run, this session's included."""
    new: int
    """Answers obtained in this session."""
    complete: bool
    resumed: bool
    already_complete: bool
    seconds: float
    images_per_s: float
    output_mode: str | None
    stats: ClientStats = field(default_factory=ClientStats)


def find_run(session: Session, config: QueryConfig, pool: ImageDataset) -> Run | None:
    """The latest run of the same command (URL, pool spec, strategy, budget, seed)."""
    stmt = (
        select(Run)
        .where(
            Run.victim_url == config.victim_url,
            Run.pool == config.pool,
            Run.pool_size == len(pool),
            Run.strategy == config.strategy,
            Run.budget == config.budget,
            Run.seed == config.seed,
        )
        .order_by(Run.id.desc())
    )
    for run in session.scalars(stmt):
        if run.pool_image_size == config.pool_image_size:
            return run
    return None


def load_pool_of(config: QueryConfig) -> ImageDataset:
    return load_dataset(
        config.pool, size=config.pool_size, image_size=config.pool_image_size, seed=config.seed
    )


def new_run(config: QueryConfig, pool: ImageDataset, info: ModelInfo) -> Run:
    batch_size = min(config.batch_size, info.max_images_per_request)
    return Run(
        victim_url=config.victim_url,
        pool=config.pool,
        pool_size=len(pool),
        pool_image_size=config.pool_image_size,
        strategy=config.strategy,
        budget=config.budget,
        seed=config.seed,
        batch_size=batch_size,
        output_mode=info.output,
        num_outputs=info.num_outputs,
        input_size=info.input_size,
        params={
            "pool_seed": config.seed,
            "pool_name": pool.name,
            "send_size": info.input_size if config.resize_to_input else None,
            "image_format": config.image_format,
            "protocol": config.protocol,
            "concurrency": config.concurrency,
            # the adaptive plan learns from answers `feedback_window` batches late, fixed at
            # creation so a resumed run (any concurrency) makes the same choices
            "feedback_window": config.concurrency,
            "max_images_per_request": info.max_images_per_request,
            "top_k": info.top_k,
            "round_decimals": info.round_decimals,
            "adaptive": vars(config.adaptive) if config.strategy == "adaptive" else None,
        },
        status="running",
    )


def check_same_api(run: Run, info: ModelInfo) -> None:
    if (run.output_mode, run.num_outputs) != (info.output, info.num_outputs):
        raise TestbedError(
            f"the API changed since run {run.id} began: it answered {run.num_outputs} outputs "
            f"as {run.output_mode!r}, now {info.num_outputs} as {info.output!r}; "
            f"use another --db or seed for a new run"
        )


def run_summary(result: QueryResult) -> str:
    """One line for the terminal."""
    if result.already_complete:
        return (
            f"run {result.run_id} in {result.db} is already complete "
            f"({result.budget} images); nothing to do"
        )
    state = "complete" if result.complete else "paused (run the same command to continue)"
    return (
        f"run {result.run_id}: {result.answered}/{result.budget} images answered "
        f"({result.new} new{', resumed' if result.resumed else ''}) at "
        f"{result.images_per_s:.0f} img/s, output {result.output_mode!r}, {state}; "
        f"{result.stats.retries} retries, {result.stats.rate_limited} rate-limited -> {result.db}"
    )
