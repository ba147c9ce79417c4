"""Reading a transfer set back: the run's output mode decides the loss, and images are checked
against the sha256 of what was sent before anyone trains on them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from attacker.store import Query, Run, open_store, sent_image
from attacker.transfer import load_transfer_set
from shared.datasets import load_dataset
from shared.errors import TestbedError
from shared.imaging import encode_image


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(encode_image(image)).hexdigest()


def _write_run(db, answers: list[dict], output_mode: str = "probs", sha: list[str] | None = None):
    """A run over the first len(answers) images of a small natural pool, stored as sent."""
    pool = load_dataset("natural", size=40, image_size=32, seed=0)
    with open_store(db)() as session:
        run = Run(victim_url="in-process", pool="natural", pool_size=40, pool_image_size=32,
                  strategy="random", budget=len(answers), seed=0, batch_size=8,
                  output_mode=output_mode, num_outputs=4, input_size=32,
                  params={"send_size": 32, "image_format": "png"})  # fmt: skip
        session.add(run)
        session.flush()
        for i, answer in enumerate(answers):
            digest = sha[i] if sha else _digest(sent_image(run, pool, i))
            session.add(Query(run_id=run.id, position=i, pool_index=i, reference=f"natural#{i}",
                              sha256=digest, answer=answer, label=0, latency_ms=0.0))  # fmt: skip
        session.commit()


def test_the_training_mode_is_the_runs_output_mode_not_the_first_answers(tmp_path):
    """A probabilities run whose first answer was flagged label-only (the `label` action)
    still trains on soft labels; the flagged row is a hard label inside it."""
    probs = {"probabilities": [0.1, 0.6, 0.2, 0.1]}
    db = tmp_path / "t.sqlite"
    _write_run(db, [{"label": 3}] + [probs] * 11)
    transfer = load_transfer_set(db)
    assert transfer.mode == "probs"
    assert transfer.targets[0, 0].tolist() == [0, 0, 0, 1]
    assert np.allclose(transfer.targets[1, 0].numpy(), [0.1, 0.6, 0.2, 0.1])
    assert transfer.labels.tolist() == [3] + [1] * 11


def test_a_pool_that_changed_since_the_run_is_refused_before_training(tmp_path):
    db = tmp_path / "t.sqlite"
    answers = [{"probabilities": [0.1, 0.6, 0.2, 0.1]}] * 12
    pool = load_dataset("natural", size=40, image_size=32, seed=0)
    digests = [_digest(pool.image(i)) for i in range(12)]
    digests[5] = _digest(pool.image(30))  # what was sent at position 5 is not pool image 5 now
    _write_run(db, answers, sha=digests)
    with pytest.raises(TestbedError, match="position 5.*sha256"):
        load_transfer_set(db)
    assert len(load_transfer_set(db, budget=5).images) == 5  # the prefix before it is intact


def test_malformed_stored_answers_are_named_by_position(tmp_path):
    db = tmp_path / "t.sqlite"
    answers = [{"probabilities": [0.1, 0.6, 0.2, 0.1]}] * 11 + [
        {"top_k": [{"index": 9, "probability": 0.5}]}
    ]
    _write_run(db, answers)
    with pytest.raises(TestbedError, match="position 11.*out of range"):
        load_transfer_set(db)
