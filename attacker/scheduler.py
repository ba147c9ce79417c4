"""The query scheduler: batches in plan order, at most `concurrency` requests in flight, answers
fed back to a learning strategy with a fixed delay, every received answer handed to the writer."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from attacker.client import FatalAPIError, PredictClient
from attacker.runs import QueryConfig
from attacker.sources import ImageSource, prepare
from attacker.store import Run, utcnow
from attacker.strategies import Strategy
from attacker.writer import Writer
from shared.errors import TestbedError
from shared.schemas import AnswerError, parse_answer


@dataclass
class _Batch:
    number: int
    positions: list[int]
    indices: list[int]
    answers: list[dict[str, Any]] | None = None
    images: np.ndarray | None = None


class PlannedStrategy:
    """Index = position: for runs whose images are planned ahead and stored (JBDA rounds)."""

    name = "planned"
    needs_feedback = False

    def select(self, start: int, count: int) -> list[int]:
        return list(range(start, start + count))

    def observe(self, start, indices, images, answers) -> None:
        """Planned runs do not learn while querying."""


async def query_loop(
    config: QueryConfig,
    run: Run,
    source: ImageSource,
    client: PredictClient,
    strategy: Strategy,
    stored: dict[int, tuple[int, dict | None]],
    factory: sessionmaker[Session],
    span: range | None = None,
) -> tuple[int, float]:
    """Schedule batches in plan order with at most `concurrency` requests in flight.

    `span` is the positions to cover (all of the run's budget by default; one JBDA round).
    A learning strategy sees batch k's answers just before choosing batch k + window + 1,
    whatever the order the answers arrived in, so its choices do not depend on timing.
    """
    span = span if span is not None else range(run.budget)
    size, budget, base = run.batch_size, span.stop, span.start
    window = int((run.params or {}).get("feedback_window") or config.concurrency)
    n_batches = math.ceil(len(span) / size)
    limit = config.limit if config.limit is not None else budget
    writer = Writer(factory, config.commit_every, config.commit_interval_s)
    done: dict[int, _Batch] = {}  # answered batches the strategy has not observed yet
    pending: dict[asyncio.Task, _Batch] = {}
    next_batch = observed = launched = new = 0
    start = first = time.perf_counter()
    last_answer = start
    bar = tqdm(
        total=len(span), initial=sum(p in stored for p in span), unit="img",
        desc=f"run {run.id} {run.strategy}",
        disable=not config.progress, dynamic_ncols=True, smoothing=0.1,
    )  # fmt: skip

    async def send(batch: _Batch, missing: list[int]) -> _Batch:
        indices = [batch.indices[batch.positions.index(p)] for p in missing]
        images, payloads, hashes, pixels = await asyncio.to_thread(prepare, source, indices)
        if config.protocol == "v2":
            answers, latency_ms = await client.infer_timed(images)
        else:
            answers, latency_ms = await client.predict_timed(payloads)
        now = utcnow()
        rows = []
        sent = zip(missing, indices, hashes, pixels, answers, strict=True)
        for position, index, digest, pixels_sha256, answer in sent:
            try:
                label = parse_answer(answer, run.num_outputs).label
            except AnswerError as exc:
                raise FatalAPIError(f"the API answered {answer!r}: {exc}") from None
            rows.append(
                dict(
                    run_id=run.id,
                    position=position,
                    pool_index=index,
                    reference=source.reference(index),
                    sha256=digest,
                    pixels_sha256=pixels_sha256,
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
                    lambda b=batch: source.payloads(b.indices)[0]
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
                first_position = base + next_batch * size
                positions = list(range(first_position, min(first_position + size, budget)))
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
