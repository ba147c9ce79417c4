"""`parse_answer` of two revisions side by side, alternated in one process, on a 10-class
probability vector as a v1 response's JSON holds it, a top-2 and a bare label. Usage, from the
project root:

    .venv/bin/python results/bench/components-runs/2026-12-08-noise-answers/parse_answer_ab.py \
        9d671d6 --json results/bench/components-runs/2026-12-08-noise-answers/parse_answer_ab.json

`base` is shared/schemas.py at the given revision, `new` the working tree's. Medians of the
rounds' microseconds per answer (wall time of 20,000 calls)."""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from benchmarks.common import revision_ab  # noqa: E402


def cases(base, new) -> dict:
    logits = np.random.default_rng(0).normal(size=10)
    softmax = (np.exp(logits) / np.exp(logits).sum()).tolist()
    rows = {
        "probabilities": json.loads(json.dumps({"probabilities": softmax})),
        "top_k": {"top_k": [{"index": 3, "probability": 0.5}, {"index": 1, "probability": 0.25}]},
        "label": {"label": 3},
    }
    for row in rows.values():
        assert base.parse_answer(row, 10).label == new.parse_answer(row, 10).label
    return {
        name: lambda m, row=row: timeit.timeit(lambda: m.parse_answer(row, 10), number=20000) * 50
        for name, row in rows.items()
    }


if __name__ == "__main__":
    revision_ab("shared/schemas.py", cases, rounds=7)
