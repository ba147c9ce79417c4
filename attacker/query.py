"""The attacker's querying session: pool -> strategy -> client -> transfer set, crash-safe.

A run is identified by (victim URL, pool spec, strategy, budget, seed) (`attacker.runs`).
Running the same command again continues the unfinished run: the strategy's plan is
deterministic (the pool is `load_dataset(pool, size=pool_size, image_size=pool_image_size,
seed=seed)` and every random choice is seeded by (seed, position)), answers already in the
database are skipped (or, for the adaptive strategy, replayed into the bandit in plan order),
and the unique constraints make a second copy of an answer impossible. The scheduling is
`attacker.scheduler`'s, the committing `attacker.writer`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import OperationalError

from attacker.client import PredictClient
from attacker.runs import (
    QueryConfig,
    QueryResult,
    check_same_api,
    find_run,
    load_pool_of,
    new_run,
    run_summary,
)
from attacker.scheduler import query_loop
from attacker.sent import check_pool_unchanged
from attacker.sources import IMAGE_FORMAT, V2_IMAGE_FORMAT, PoolSource
from attacker.store import open_store
from attacker.strategies import make_strategy
from attacker.writer import finish_run, stored_answers
from shared.errors import TestbedError

T = TypeVar("T")

__all__ = ["IMAGE_FORMAT", "V2_IMAGE_FORMAT", "QueryConfig", "QueryResult", "guarded",
           "open_client", "query_async", "run_query", "run_summary"]  # fmt: skip


def open_client(config: QueryConfig) -> PredictClient:
    """The async client with the session's connection options."""
    return PredictClient(
        config.base_url,
        api_key=config.api_key,
        concurrency=config.concurrency,
        timeout_s=config.timeout_s,
        retry=config.retry,
        seed=config.seed,
        protocol=config.protocol,
        model=config.model,
        binary=config.binary,
    )


async def guarded(factory, run_id: int, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`; on any error mark the run stopped (with the message) and re-raise."""
    try:
        return await work()
    except BaseException as exc:
        message = str(exc) if isinstance(exc, TestbedError) else type(exc).__name__
        with contextlib.suppress(Exception):
            await asyncio.to_thread(finish_run, factory, run_id, "stopped", message)
        raise


async def query_async(config: QueryConfig) -> QueryResult:
    """Run (or resume) the query phase of an attack until the budget is answered."""
    pool = await asyncio.to_thread(load_pool_of, config)
    # a new transfer set is created once the API has answered: a wrong URL leaves no file
    factory = open_store(config.db) if Path(config.db).exists() else None
    run = None
    if factory is not None:
        with factory() as session:
            run = find_run(session, config, pool)
    if run is not None and run.status == "complete":
        return QueryResult(
            run.id, config.db, run.budget, run.budget, 0, True, True, True, 0.0, 0.0,
            run.output_mode,
        )  # fmt: skip
    async with open_client(config) as client:
        info = await client.model_info(config.batch_size)
        factory = factory or open_store(config.db)
        resumed = run is not None
        if run is None:
            with factory() as session, session.begin():
                run = new_run(config, pool, info)
                session.add(run)
        else:
            check_same_api(run, info)
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
        stored = await asyncio.to_thread(stored_answers, factory, run.id, strategy.needs_feedback)
        if resumed:
            await asyncio.to_thread(check_pool_unchanged, factory, run, pool, list(stored))
        source = PoolSource(run, pool)
        new, seconds = await guarded(
            factory,
            run.id,
            lambda: query_loop(config, run, source, client, strategy, stored, factory),
        )
    answered = len(stored) + new
    complete = answered >= run.budget
    status = "complete" if complete else "running"
    await asyncio.to_thread(finish_run, factory, run.id, status, None)
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
