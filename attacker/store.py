"""The transfer set in SQLite through SQLAlchemy 2.0: one row per run, one row per answered image.

WAL journaling with synchronous=NORMAL survives a killed process without losing a committed
row; unique constraints on (run, position) and (run, pool index) make a resumed run unable to
store an image twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from shared.errors import TestbedError

if TYPE_CHECKING:
    from shared.datasets import ImageDataset


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One attack run: where it queried, with what, and what the API disclosed."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    victim_url: Mapped[str] = mapped_column(String(500))
    pool: Mapped[str] = mapped_column(String(500))
    pool_size: Mapped[int | None] = mapped_column(Integer)
    pool_image_size: Mapped[int | None] = mapped_column(Integer)
    strategy: Mapped[str] = mapped_column(String(50))
    budget: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    output_mode: Mapped[str | None] = mapped_column(String(20))
    num_outputs: Mapped[int | None] = mapped_column(Integer)
    input_size: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="running")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    queries: Mapped[list[Query]] = relationship(back_populates="run", order_by="Query.position")


class Query(Base):
    """One image sent and the answer as returned (probabilities, top-k or label)."""

    __tablename__ = "queries"
    __table_args__ = (
        UniqueConstraint("run_id", "position", name="uq_run_position"),
        UniqueConstraint("run_id", "pool_index", name="uq_run_pool_index"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    """Order in the run's query plan, 0 .. budget - 1; a prefix is a smaller budget."""
    pool_index: Mapped[int] = mapped_column(Integer)
    reference: Mapped[str] = mapped_column(String(1000))
    """Reloadable: `pool#index` for generated pools, the file path for folders."""
    sha256: Mapped[str] = mapped_column(String(64))
    """Hash of the exact bytes sent."""
    pixels_sha256: Mapped[str | None] = mapped_column(String(64))
    """`pixels_digest` of the image sent: what the victim saw, whatever encoder made the bytes
    (None in runs stored before it existed)."""
    answer: Mapped[dict[str, Any]] = mapped_column(JSON)
    label: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="queries")


class Blob(Base):
    """Bytes sent that no pool can rebuild (JBDA's synthetic images), keyed by their sha256:
    an image sent twice, by any run, is stored once."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class PlannedImage(Base):
    """A position's image, fixed before it is sent (a JBDA round is planned, stored, then
    queried), so a killed run resumes with the very images it had planned."""

    __tablename__ = "planned_images"
    __table_args__ = (UniqueConstraint("run_id", "position", name="uq_planned_position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))


ADDED_COLUMNS = {("queries", "pixels_sha256"): "VARCHAR(64)"}
"""Nullable columns a database from an older version gains in place when opened."""


def pixels_digest(image: np.ndarray) -> str:
    """sha256 of an (H, W, 3) uint8 image's shape and pixels. A PNG's bytes also depend on the
    compressor that made them (zlib-ng's output differs by version and CPU, by design), so a
    run is checked against the pixels it sent, not only against its bytes."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.sha256("x".join(map(str, pixels.shape)).encode() + b":")
    digest.update(memoryview(pixels).cast("B"))
    return digest.hexdigest()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_store(path: str | Path) -> sessionmaker[Session]:
    """Open (creating if needed) the transfer-set database; returns a session factory."""
    path = Path(path)
    if path.is_dir():
        example = path / "transfer.sqlite"
        raise TestbedError(f"{path} is a folder; a transfer set is one SQLite file, e.g. {example}")
    path.parent.mkdir(parents=True, exist_ok=True)
    engine: Engine = create_engine(f"sqlite:///{path}", json_serializer=json.dumps)
    event.listen(engine, "connect", _sqlite_pragmas)
    _check_schema(engine, path)
    _add_columns(engine)
    Base.metadata.create_all(engine)  # adds the tables a database from an older version lacks
    return sessionmaker(engine, expire_on_commit=False)


def _check_schema(engine: Engine, path: Path) -> None:
    """Refuse, in one line, a file that is not a transfer set or misses columns we need."""
    try:
        tables = inspect(engine).get_table_names()
        for table in Base.metadata.sorted_tables:
            if table.name in tables:
                have = {c["name"] for c in inspect(engine).get_columns(table.name)}
                have |= {column for t, column in ADDED_COLUMNS if t == table.name}
                if missing := sorted(set(table.columns.keys()) - have):
                    raise TestbedError(
                        f"{path} is a transfer set from an incompatible version: table "
                        f"{table.name} lacks {', '.join(missing)}; use a new --db"
                    )
    except OperationalError:
        raise  # locked, read-only, disk full: the caller says what it could not do
    except DatabaseError as exc:
        raise TestbedError(f"{path} is not a transfer-set database ({exc.orig})") from None


def _add_columns(engine: Engine) -> None:
    """Give an existing table the nullable columns added since it was made (`ADDED_COLUMNS`)."""
    tables = set(inspect(engine).get_table_names())
    with engine.begin() as connection:
        for (table, column), kind in ADDED_COLUMNS.items():
            if table in tables:
                have = {c["name"] for c in inspect(connection).get_columns(table)}
                if column not in have:
                    connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def store_blobs(session: Session, data: list[bytes]) -> list[str]:
    """Store each payload once (deduplicated by sha256); their sha256, in order."""
    digests = [hashlib.sha256(d).hexdigest() for d in data]
    have = set(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(set(digests)))))
    for digest, payload in zip(digests, data, strict=True):
        if digest not in have:
            session.add(Blob(sha256=digest, data=payload))
            have.add(digest)
    return digests


def read_blobs(session: Session, digests: list[str]) -> dict[str, bytes]:
    """sha256 -> bytes, each checked against its key; a missing blob is a clear error."""
    rows = dict(
        session.execute(select(Blob.sha256, Blob.data).where(Blob.sha256.in_(set(digests)))).all()
    )
    for digest in digests:
        data = rows.get(digest)
        if data is None:
            raise TestbedError(f"the transfer set has no stored image with sha256 {digest}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise TestbedError(f"the stored image {digest} is corrupt (its sha256 differs)")
    return rows


def planned_images(session: Session, run_id: int) -> dict[int, str]:
    """position -> sha256 of the run's planned images."""
    stmt = select(PlannedImage.position, PlannedImage.sha256).where(PlannedImage.run_id == run_id)
    return dict(session.execute(stmt).all())


def load_pool(run: Run) -> ImageDataset:
    """The run's query pool, rebuilt exactly: `load_dataset(run.pool, size=run.pool_size,
    image_size=run.pool_image_size, seed=run.seed)`; the run's seed is also the pool's seed."""
    from shared.datasets import load_dataset

    return load_dataset(run.pool, size=run.pool_size, image_size=run.pool_image_size, seed=run.seed)


def sent_image(run: Run, pool: ImageDataset, pool_index: int) -> np.ndarray:
    """The pixels the victim received for `pool_index` (resized to `params["send_size"]`)."""
    from shared.imaging import resize

    image = pool.image(int(pool_index))
    size = (run.params or {}).get("send_size")
    return resize(image, int(size)) if size else image


def image_format(run: Run) -> str:
    """How the run's images were sent: `png` (/v1, and every run from before the parameter) or
    `raw` pixels (/v2)."""
    return (run.params or {}).get("image_format", "png")


def load_run(session: Session, run_id: int | None = None) -> Run:
    """A run by id, or the latest one."""
    if run_id is not None:
        run = session.get(Run, run_id)
    else:
        run = session.scalars(select(Run).order_by(Run.id.desc()).limit(1)).first()
    if run is None:
        raise TestbedError(
            f"no run {run_id if run_id is not None else ''} in this database".strip()
        )
    return run


def iter_queries(session: Session, run_id: int, limit: int | None = None) -> Iterator[Query]:
    """The run's answered queries in plan order (the first `limit` positions)."""
    stmt = select(Query).where(Query.run_id == run_id).order_by(Query.position)
    if limit is not None:
        stmt = stmt.limit(limit)
    yield from session.scalars(stmt)


def answer_count(path: str | Path) -> int:
    """Answers committed to a transfer set, every run together (0 before it exists): what a
    run stopped by a refusal obtained."""
    if not Path(path).exists():
        return 0
    with open_store(path)() as session:
        return int(session.scalar(select(func.count()).select_from(Query)) or 0)
