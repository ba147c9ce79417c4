"""Read a transfer set back from SQLite: the images (reloaded from the pool) and the answers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import Session

from attacker.sent import checked_payload, uses_blobs
from attacker.store import (
    Query,
    Run,
    image_format,
    iter_queries,
    load_pool,
    load_run,
    open_store,
    read_blobs,
)
from shared.errors import TestbedError
from shared.imaging import decode_image, resize
from shared.schemas import Answer, AnswerError, parse_answer
from shared.training import to_tensor


@dataclass
class TransferSet:
    images: torch.Tensor
    """uint8 (N, 3, S, S), in query order."""
    targets: torch.Tensor
    """float (N, 2, C): `Answer.target()` of each row: the disclosed vector and known mask."""
    labels: torch.Tensor
    """The victim's top class for each image (N,)."""
    mode: str
    num_classes: int
    input_size: int
    run: dict


def load_transfer_set(
    db: str | Path,
    run_id: int | None = None,
    budget: int | None = None,
    hard_labels: bool = False,
) -> TransferSet:
    """The first `budget` answered queries of a run (all when None), images at the API's size.

    `hard_labels` keeps only each answer's label (Copycat trains on the argmax whatever the API
    disclosed)."""
    db = Path(db)
    if not db.exists():
        raise TestbedError(f"transfer set {db} does not exist; run `attacker query` first")
    sessions = open_store(db)
    with sessions() as session:
        run = load_run(session, run_id)
        queries = list(iter_queries(session, run.id, budget))
        if not queries:
            raise TestbedError(f"run {run.id} in {db} has no answered queries")
        if budget is not None and len(queries) < budget:
            raise TestbedError(f"run {run.id} has {len(queries)} answers, fewer than {budget}")
        num_classes = run.num_outputs or _infer_classes(queries[0].answer)
        size = run.input_size or 32
        mode = run_mode(run, queries[0].answer)
        answers = [_parse(q, num_classes) for q in queries]
        if hard_labels:
            mode, answers = "label", [Answer(a.num_outputs, a.label) for a in answers]
        images = np.stack([resize(image, size) for image in sent_images(session, run, queries)])
        info = {"id": run.id, "victim_url": run.victim_url, "pool": run.pool,
                "strategy": run.strategy, "budget": run.budget, "seed": run.seed}  # fmt: skip
    targets = torch.from_numpy(np.stack([np.stack(a.target()) for a in answers]).astype(np.float32))
    labels = torch.tensor([a.label for a in answers], dtype=torch.long)
    return TransferSet(to_tensor(images), targets, labels, mode, num_classes, size, info)


def answers_digest(db: str | Path, run_id: int | None = None, budget: int | None = None) -> str:
    """A content hash of a run's first `budget` answers taken as a set: each image as sent (its
    stored sha256) with its answer, and the run's output mode, outputs and input size. The order
    they were asked in is left out, as `attacker.train.content_order` leaves it out of the
    knockoff: the same answers, however they were gathered, name the same knockoff. (Answers
    that differ only in the last float bits, as the same victim's can from one batch to
    another, are other answers here: nothing is rounded.)"""
    sessions = open_store(Path(db))
    with sessions() as session:
        run = load_run(session, run_id)
        rows = sorted(
            f"{q.sha256}:{json.dumps(q.answer, sort_keys=True)}"
            for q in iter_queries(session, run.id, budget)
        )
        head = json.dumps([run.output_mode, run.num_outputs, run.input_size])
    digest = hashlib.sha256(head.encode())
    for row in rows:
        digest.update(row.encode() + b"\n")
    return digest.hexdigest()[:24]


def run_mode(run: Run, first: dict) -> str:
    """The loss follows the run's output mode (what the API was configured to disclose), never
    one answer: a defense's label-only row is a hard label inside a probabilities run."""
    if run.output_mode in ("probs", "topk", "label"):
        return run.output_mode
    return parse_answer(first, run.num_outputs).mode  # databases from before output_mode


def _parse(query: Query, num_classes: int) -> Answer:
    try:
        return parse_answer(query.answer, num_classes)
    except AnswerError as exc:
        raise TestbedError(f"run {query.run_id}, position {query.position}: {exc}") from None


def sent_payloads(
    session: Session, run: Run, queries: list[Query]
) -> Iterator[tuple[np.ndarray, bytes]]:
    """(image, bytes) for each query: the stored bytes of synthetic images (JBDA), else the pool
    image, checked against what was sent (`check_sent`), in the run's format as encoded here:
    the very bytes sent unless another PNG encoder sent them."""
    if uses_blobs(run):
        blobs = read_blobs(session, [q.sha256 for q in queries])
        for query in queries:
            yield decode_image(blobs[query.sha256]), blobs[query.sha256]
        return
    yield from _pool_payloads(run, queries, with_bytes=True)


def sent_images(session: Session, run: Run, queries: list[Query]) -> Iterator[np.ndarray]:
    """The pixels sent for each query, checked against what was stored when it was sent."""
    payloads = (
        sent_payloads(session, run, queries)
        if uses_blobs(run)
        else _pool_payloads(run, queries, with_bytes=False)
    )
    for image, _ in payloads:
        yield image


def _pool_payloads(
    run: Run, queries: list[Query], with_bytes: bool
) -> Iterator[tuple[np.ndarray, bytes | None]]:
    """(image, its bytes in the run's format or None) for each pool query, checked
    (`checked_payload`)."""
    pool, fmt = load_pool(run), image_format(run)
    for query in queries:
        yield checked_payload(run, pool, query, fmt, with_bytes)


def _infer_classes(answer: dict) -> int:
    if answer.get("probabilities") is not None:
        return len(answer["probabilities"])
    raise TestbedError("the run does not record the number of outputs; query /v1/model first")
