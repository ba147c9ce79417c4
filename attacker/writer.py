"""The transfer set's writer: answered rows committed in batched transactions off the event
loop; a SIGKILL loses at most the uncommitted ones, which the next session asks again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from attacker.store import Query, Run, utcnow
from shared.errors import TestbedError


def stored_answers(
    factory: sessionmaker[Session], run_id: int, with_answers: bool
) -> dict[int, tuple[int, dict | None]]:
    """position -> (pool index, answer or None) of the run's committed answers."""
    columns = [Query.position, Query.pool_index] + ([Query.answer] if with_answers else [])
    with factory() as session:
        rows = session.execute(select(*columns).where(Query.run_id == run_id)).all()
    return {row[0]: (row[1], row[2] if with_answers else None) for row in rows}


def _write(factory: sessionmaker[Session], rows: list[dict[str, Any]]) -> None:
    """One executemany on the table itself: the ORM's bulk insert of the same rows took 1.4
    times the CPU (`python -m benchmarks.components`, three runs: 1.1-1.7 against 0.8-1.2 ms
    per 32 rows, `transfer_set_write_orm` and `transfer_set_write`)."""
    with factory() as session, session.begin():
        session.execute(insert(Query.__table__), rows)


def finish_run(factory: sessionmaker[Session], run_id: int, status: str, error: str | None) -> None:
    with factory() as session, session.begin():
        run = session.get(Run, run_id)
        assert run is not None
        run.status = status
        if status == "complete":
            run.finished_at = utcnow()
        if error is not None:
            run.params = {**(run.params or {}), "last_error": error}


class Writer:
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
