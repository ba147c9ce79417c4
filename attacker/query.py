"""The attacker's querying loop: pool -> strategy -> client -> transfer set, crash-safe.

A run is identified by (victim URL, pool spec, strategy, budget, seed). Running the same
command again continues the unfinished run: the strategy's plan is deterministic (the pool is
`load_dataset(pool, size=pool_size, image_size=pool_image_size, seed=seed)` and every random
choice is seeded by (seed, position)), answers already in the database are skipped (or, for the
adaptive strategy, replayed into the bandit in plan order), and the unique constraints make a
second copy of an answer impossible. Answers are committed in batched transactions; a SIGKILL
loses at most the uncommitted ones, which the next run asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from attacker.client import PROTOCOLS, ClientStats, FatalAPIError, PredictClient, RetryPolicy
from attacker.store import Query, Run, open_store, sent_image, utcnow
from attacker.strategies import STRATEGIES, AdaptiveConfig, Strategy, make_strategy
from shared.datasets import ImageDataset, load_dataset
from shared.errors import TestbedError
from shared.imaging import encode_image
from shared.schemas import AnswerError, ModelInfo, parse_answer

IMAGE_FORMAT = "png"
"""Lossless and deterministic: the same image always gives the same bytes and sha256."""
V2_IMAGE_FORMAT = "raw"
"""v2 sends the pixels themselves as a tensor: the sha256 is that of the array's bytes."""


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


@dataclass
class _Batch:
    number: int
    positions: list[int]
    indices: list[int]
    answers: list[dict[str, Any]] | None = None
    images: np.ndarray | None = None


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


def _load_pool(config: QueryConfig) -> ImageDataset:
    return load_dataset(
        config.pool, size=config.pool_size, image_size=config.pool_image_size, seed=config.seed
    )


def _new_run(config: QueryConfig, pool: ImageDataset, info: ModelInfo) -> Run:
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


def _check_same_api(run: Run, info: ModelInfo) -> None:
    if (run.output_mode, run.num_outputs) != (info.output, info.num_outputs):
        raise TestbedError(
            f"the API changed since run {run.id} began: it answered {run.num_outputs} outputs "
            f"as {run.output_mode!r}, now {info.num_outputs} as {info.output!r}; "
            f"use another --db or seed for a new run"
        )


def _stored(
    factory: sessionmaker[Session], run_id: int, with_answers: bool
) -> dict[int, tuple[int, dict | None]]:
    """position -> (pool index, answer or None) of the run's committed answers."""
    columns = [Query.position, Query.pool_index] + ([Query.answer] if with_answers else [])
    with factory() as session:
        rows = session.execute(select(*columns).where(Query.run_id == run_id)).all()
    return {row[0]: (row[1], row[2] if with_answers else None) for row in rows}


def _prepare(
    run: Run, pool: ImageDataset, indices: Sequence[int]
) -> tuple[np.ndarray, list[bytes], list[str]]:
    """The images as sent, their bytes (PNG for v1, raw for v2) and sha256 (off the loop)."""
    images = np.stack([sent_image(run, pool, i) for i in indices])
    fmt = (run.params or {}).get("image_format", IMAGE_FORMAT)
    payloads = [encode_image(image, fmt) for image in images]
    return images, payloads, [hashlib.sha256(p).hexdigest() for p in payloads]


def _write(factory: sessionmaker[Session], rows: list[dict[str, Any]]) -> None:
    with factory() as session, session.begin():
        session.execute(insert(Query), rows)


def _finish(factory: sessionmaker[Session], run_id: int, status: str, error: str | None) -> None:
    with factory() as session, session.begin():
        run = session.get(Run, run_id)
        assert run is not None
        run.status = status
        if status == "complete":
            run.finished_at = utcnow()
        if error is not None:
            run.params = {**(run.params or {}), "last_error": error}


class _Writer:
    """Collects answered rows and commits them in batched transactions on a worker thread."""

    def __init__(self, factory: sessionmaker[Session], every: int, interval_s: float) -> None:
        self.factory, self.every, self.interval_s = factory, every, interval_s
        self.rows: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.committed = 0
        self._task: asyncio.Task | None = None

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    async def maybe_flush(self) -> None:
        due = time.monotonic() - self.last >= self.interval_s
        if len(self.rows) >= self.every or (due and self.rows):
            await self.flush(wait=False)

    async def flush(self, wait: bool = True) -> None:
        if self._task is not None and (wait or self._task.done()):
            task, self._task = self._task, None
            await task  # raises what the write raised
        if self._task is not None or not self.rows:
            return
        rows, self.rows, self.last = self.rows, [], time.monotonic()
        self._task = asyncio.create_task(self._commit(rows))
        if wait:
            await self.flush()

    async def _commit(self, rows: list[dict[str, Any]]) -> None:
        try:
            await asyncio.to_thread(_write, self.factory, rows)
        except IntegrityError as exc:
            raise TestbedError(
                "an answer for one of these images is already stored: is another attacker "
                f"writing the same run? ({exc.orig})"
            ) from None
        self.committed += len(rows)


async def query_async(config: QueryConfig) -> QueryResult:
    """Run (or resume) the query phase of an attack until the budget is answered."""
    pool = await asyncio.to_thread(_load_pool, config)
    factory = open_store(config.db)
    with factory() as session:
        run = find_run(session, config, pool)
    if run is not None and run.status == "complete":
        return QueryResult(
            run.id, config.db, run.budget, run.budget, 0, True, True, True, 0.0, 0.0,
            run.output_mode,
        )  # fmt: skip
    async with PredictClient(
        config.base_url,
        api_key=config.api_key,
        concurrency=config.concurrency,
        timeout_s=config.timeout_s,
        retry=config.retry,
        seed=config.seed,
        protocol=config.protocol,
        model=config.model,
        binary=config.binary,
    ) as client:
        info = await client.model_info(config.batch_size)
        resumed = run is not None
        if run is None:
            with factory() as session, session.begin():
                run = _new_run(config, pool, info)
                session.add(run)
        else:
            _check_same_api(run, info)
        strategy = make_strategy(
            config.strategy,
            targets=pool.targets,
            budget=config.budget,
            num_outputs=info.num_outputs,
            seed=config.seed,
            class_groups=pool.class_groups,
            num_classes=len(pool.classes),
            adaptive=config.adaptive,
        )
        stored = await asyncio.to_thread(_stored, factory, run.id, strategy.needs_feedback)
        try:
            new, seconds = await _query_loop(config, run, pool, client, strategy, stored, factory)
        except BaseException as exc:
            message = str(exc) if isinstance(exc, TestbedError) else type(exc).__name__
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_finish, factory, run.id, "stopped", message)
            raise
    answered = len(stored) + new
    complete = answered >= run.budget
    await asyncio.to_thread(_finish, factory, run.id, "complete" if complete else "running", None)
    return QueryResult(
        run_id=run.id,
        db=config.db,
        budget=run.budget,
        answered=answered,
        new=new,
        complete=complete,
        resumed=resumed,
        already_complete=False,
        seconds=seconds,
        images_per_s=new / seconds if seconds > 0 else 0.0,
        output_mode=run.output_mode,
        stats=client.stats,
    )


async def _query_loop(
    config: QueryConfig,
    run: Run,
    pool: ImageDataset,
    client: PredictClient,
    strategy: Strategy,
    stored: dict[int, tuple[int, dict | None]],
    factory: sessionmaker[Session],
) -> tuple[int, float]:
    """Schedule batches in plan order with at most `concurrency` requests in flight.

    A learning strategy sees batch k's answers just before choosing batch k + window + 1,
    whatever the order the answers arrived in, so its choices do not depend on timing.
    """
    size, budget = run.batch_size, run.budget
    window = int((run.params or {}).get("feedback_window") or config.concurrency)
    n_batches = math.ceil(budget / size)
    limit = config.limit if config.limit is not None else budget
    writer = _Writer(factory, config.commit_every, config.commit_interval_s)
    done: dict[int, _Batch] = {}  # answered batches the strategy has not observed yet
    pending: dict[asyncio.Task, _Batch] = {}
    next_batch = observed = launched = new = 0
    start = first = time.perf_counter()
    last_answer = start
    bar = tqdm(
        total=budget, initial=len(stored), unit="img", desc=f"run {run.id} {run.strategy}",
        disable=not config.progress, dynamic_ncols=True, smoothing=0.1,
    )  # fmt: skip

    async def send(batch: _Batch, missing: list[int]) -> _Batch:
        indices = [batch.indices[batch.positions.index(p)] for p in missing]
        images, payloads, hashes = await asyncio.to_thread(_prepare, run, pool, indices)
        if config.protocol == "v2":
            answers, latency_ms = await client.infer_timed(images)
        else:
            answers, latency_ms = await client.predict_timed(payloads)
        now = utcnow()
        rows = []
        for position, index, digest, answer in zip(missing, indices, hashes, answers, strict=True):
            try:
                label = parse_answer(answer, run.num_outputs).label
            except AnswerError as exc:
                raise FatalAPIError(f"the API answered {answer!r}: {exc}") from None
            rows.append(
                dict(
                    run_id=run.id,
                    position=position,
                    pool_index=index,
                    reference=pool.reference(index),
                    sha256=digest,
                    answer=answer,
                    label=label,
                    latency_ms=latency_ms,
                    created_at=now,
                )  # fmt: skip
            )
        writer.add(rows)
        by_position = dict(zip(missing, answers, strict=True))
        batch.answers = [
            by_position[p] if p in by_position else stored[p][1] for p in batch.positions
        ]
        if strategy.needs_feedback and len(missing) == len(batch.positions):
            batch.images = images
        return batch

    async def observe_through(last: int) -> bool:
        """Feed batches up to `last` to the strategy in order; False if one is not back yet."""
        nonlocal observed
        while observed <= last:
            batch = done.get(observed)
            if batch is None:
                return False
            if batch.images is None:
                batch.images = await asyncio.to_thread(
                    lambda b=batch: np.stack([sent_image(run, pool, i) for i in b.indices])
                )
            assert batch.answers is not None
            strategy.observe(batch.positions[0], batch.indices, batch.images, batch.answers)
            del done[observed]
            observed += 1
        return True

    try:
        while True:
            while next_batch < n_batches and len(pending) < config.concurrency:
                if launched >= limit:
                    break
                if strategy.needs_feedback and not await observe_through(next_batch - window - 1):
                    break
                positions = list(range(next_batch * size, min((next_batch + 1) * size, budget)))
                indices = strategy.select(positions[0], len(positions))
                batch = _Batch(next_batch, positions, indices)
                for p, i in zip(positions, indices, strict=True):
                    if p in stored and stored[p][0] != i:
                        raise TestbedError(
                            f"run {run.id} stored pool index {stored[p][0]} at position {p}, "
                            f"but the plan says {i}: the pool or the code changed since"
                        )
                missing = [p for p in positions if p not in stored]
                next_batch += 1
                if not missing:
                    if strategy.needs_feedback:
                        batch.answers = [stored[p][1] for p in positions]  # type: ignore[misc]
                        done[batch.number] = batch
                    continue
                if launched == 0:
                    first = time.perf_counter()
                launched += len(missing)
                pending[asyncio.create_task(send(batch, missing))] = batch
            if not pending:
                break
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            errors = []
            for task in finished:
                batch = pending.pop(task)
                if task.exception() is not None:
                    errors.append(task.exception())
                    continue
                count = sum(p not in stored for p in batch.positions)
                new += count
                bar.update(count)
                if strategy.needs_feedback:
                    done[batch.number] = batch
            last_answer = time.perf_counter()
            if errors:
                raise errors[0]
            await writer.maybe_flush()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        bar.close()
        await writer.flush()  # every answer received is committed, even on the way out
    return new, (last_answer - first) if new else 0.0


def run_query(config: QueryConfig) -> QueryResult:
    """Synchronous entry point (the CLI and the demo): `asyncio.run(query_async(config))`.

    A transfer set that cannot be written (disk full, read-only) stops the run with one line:
    answers go in whole transactions, so what is stored is complete and a rerun resumes it.
    """
    try:
        return asyncio.run(query_async(config))
    except OperationalError as exc:
        raise TestbedError(
            f"cannot write the transfer set {config.db}: {exc.orig}; the answers stored so far "
            "are complete, rerun the same command once it is writable"
        ) from None


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
