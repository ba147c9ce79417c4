"""Read a transfer set back from SQLite: the images (reloaded from the pool) and the answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attacker.store import iter_queries, load_pool, load_run, open_store, sent_image
from shared.errors import TestbedError
from shared.imaging import resize
from shared.schemas import answer_label
from shared.training import to_tensor


@dataclass
class TransferSet:
    images: torch.Tensor
    """uint8 (N, 3, S, S), in query order."""
    targets: torch.Tensor
    """float (N, 2, C): disclosed probabilities (one-hot for labels) and the known-class mask."""
    labels: torch.Tensor
    """The victim's top class for each image (N,)."""
    mode: str
    num_classes: int
    input_size: int
    run: dict


def encode_answer(answer: dict, num_classes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(disclosed vector, known mask, top class) of one answer as returned by the API."""
    target = np.zeros(num_classes, dtype=np.float32)
    known = np.ones(num_classes, dtype=np.float32)
    if answer.get("probabilities") is not None:
        target[:] = answer["probabilities"]
        target = np.clip(target, 0, None)
        target /= max(target.sum(), 1e-12)
    elif answer.get("top_k") is not None:
        known[:] = 0
        for entry in answer["top_k"]:
            target[entry["index"]] = entry["probability"]
            known[entry["index"]] = 1
    elif answer.get("label") is not None:
        target[int(answer["label"])] = 1.0
    else:
        raise TestbedError(f"an answer with nothing usable in it: {answer}")
    return target, known, answer_label(answer)


def answer_mode(answer: dict) -> str:
    if answer.get("probabilities") is not None:
        return "probs"
    if answer.get("top_k") is not None:
        return "topk"
    return "label"


def load_transfer_set(
    db: str | Path, run_id: int | None = None, budget: int | None = None
) -> TransferSet:
    """The first `budget` answered queries of a run (all when None), images at the API's size."""
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
        pool = load_pool(run)
        images = np.stack([resize(sent_image(run, pool, q.pool_index), size) for q in queries])
        encoded = [encode_answer(q.answer, num_classes) for q in queries]
        mode = answer_mode(queries[0].answer)
        info = {"id": run.id, "victim_url": run.victim_url, "pool": run.pool,
                "strategy": run.strategy, "budget": run.budget, "seed": run.seed}  # fmt: skip
    targets = torch.from_numpy(np.stack([np.stack([t, k]) for t, k, _ in encoded]))
    labels = torch.tensor([lab for _, _, lab in encoded], dtype=torch.long)
    return TransferSet(to_tensor(images), targets, labels, mode, num_classes, size, info)


def _infer_classes(answer: dict) -> int:
    if answer.get("probabilities") is not None:
        return len(answer["probabilities"])
    raise TestbedError("the run does not record the number of outputs; query /v1/model first")
