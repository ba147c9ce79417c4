"""What a run sent, checked: a pool image rebuilt later must be the very image sent at its
position, compared by the digest of its pixels (or, for runs stored before those digests, by its
bytes). Free of torch, so that `attacker query` can check a run it resumes."""

from __future__ import annotations

import hashlib

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from attacker.store import Query, Run, image_format, pixels_digest, sent_image
from shared.datasets import ImageDataset
from shared.errors import TestbedError
from shared.imaging import encode_image, encode_png_pillow

RESUME_SAMPLES = 8
"""Stored rows rebuilt from the pool when a run is resumed, spread over its positions."""


def sent_bytes(image: np.ndarray, fmt: str, sha256: str) -> bytes:
    """The image in the run's format as encoded here: the very bytes sent wherever an encoder
    here reproduces them. PNGs were Pillow's until `encode_png`, so a PNG that does not match
    is tried through Pillow too (a run before pixel digests can only be checked that way)."""
    data = encode_image(image, fmt)
    if fmt == "png" and hashlib.sha256(data).hexdigest() != sha256:
        legacy = encode_png_pillow(image)
        if hashlib.sha256(legacy).hexdigest() == sha256:
            return legacy
    return data


def uses_blobs(run: Run) -> bool:
    """Runs whose images are in no pool store the bytes they sent."""
    return (run.params or {}).get("images") == "blobs"


def check_sent(query: Query, image: np.ndarray, data: bytes | None, fmt: str) -> None:
    """Refuse a pool image that is not what was sent at that position (the pool changed).

    The pixels are compared where the run stored their digest, so a transfer set gathered on
    one machine trains on another whose PNG encoder compresses differently; older rows can only
    be compared by the bytes the encoder here makes (`data`, which `checked_payload` gives them)."""
    if query.pixels_sha256 is not None:
        if pixels_digest(image) == query.pixels_sha256:
            return
        raise TestbedError(
            f"pool image {query.pool_index} no longer matches what was sent at position "
            f"{query.position} (its pixels differ): the pool changed since the run"
        )
    if data is not None and hashlib.sha256(data).hexdigest() == query.sha256:
        return
    encoder = (
        ", or this machine's PNG encoder compresses differently from the one that sent it (the "
        "run predates pixel digests, so only the bytes can be compared)"
        if fmt == "png"
        else ""
    )
    raise TestbedError(
        f"pool image {query.pool_index} no longer matches what was sent at position "
        f"{query.position} (sha256 differs): the pool changed since the run{encoder}"
    )


def checked_payload(
    run: Run, pool: ImageDataset, query: Query, fmt: str, with_bytes: bool
) -> tuple[np.ndarray, bytes | None]:
    """The query's image rebuilt from the pool, checked against what was sent, and its bytes
    in the run's format, or None: an image is encoded at most once, when the caller wants its
    bytes or its row can only be checked by them."""
    image = sent_image(run, pool, query.pool_index)
    data = (
        sent_bytes(image, fmt, query.sha256) if with_bytes or query.pixels_sha256 is None else None
    )
    check_sent(query, image, data, fmt)
    return image, data


def check_pool_unchanged(
    factory: sessionmaker[Session], run: Run, pool: ImageDataset, positions: list[int]
) -> None:
    """Before a run is resumed: rebuild a few of its answered images (`RESUME_SAMPLES`, from
    the first to the last of `positions`) from the pool and check them, so that a pool changed
    since the run began (a folder's files replaced or renamed, another seed's archive) is
    refused before new answers join answers to other images. Loading the transfer set checks
    every row; this is the early warning, a few milliseconds."""
    if uses_blobs(run) or not positions:
        return
    ordered = sorted(positions)
    step = max(1, len(ordered) // RESUME_SAMPLES)
    chosen = set(ordered[::step][: RESUME_SAMPLES - 1]) | {ordered[-1]}
    fmt = image_format(run)
    with factory() as session:
        stmt = select(Query).where(Query.run_id == run.id, Query.position.in_(chosen))
        queries = sorted(session.scalars(stmt), key=lambda q: q.position)
    for query in queries:
        try:
            checked_payload(run, pool, query, fmt, with_bytes=False)
        except TestbedError as exc:
            raise TestbedError(
                f"cannot resume run {run.id}: {exc}; restore the pool, or start a new run "
                "with another --db"
            ) from None
