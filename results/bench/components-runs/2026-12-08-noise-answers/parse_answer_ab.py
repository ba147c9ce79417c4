"""`parse_answer` of two revisions side by side, alternated in one process, on a 10-class
probability vector as a v1 response's JSON holds it, a top-2 and a bare label. Usage, from the
project root:

    .venv/bin/python results/bench/components-runs/2026-12-08-noise-answers/parse_answer_ab.py \
        9d671d6 --json results/bench/components-runs/2026-12-08-noise-answers/parse_answer_ab.json

`base` is shared/schemas.py at the given revision, `new` the working tree's. Medians of the
rounds' microseconds per answer (wall time of 20,000 calls)."""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from benchmarks.common import base_and_new, machine, module_at  # noqa: E402
from shared import schemas as new  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("revision")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = module_at(args.revision, "shared/schemas.py")
    logits = np.random.default_rng(0).normal(size=10)
    softmax = (np.exp(logits) / np.exp(logits).sum()).tolist()
    rows = {
        "probabilities": json.loads(json.dumps({"probabilities": softmax})),
        "top_k": {"top_k": [{"index": 3, "probability": 0.5}, {"index": 1, "probability": 0.25}]},
        "label": {"label": 3},
    }
    results = {}
    for name, row in rows.items():
        assert base.parse_answer(row, 10).label == new.parse_answer(row, 10).label
        r = results[name] = base_and_new(
            lambda m, row=row: timeit.timeit(lambda: m.parse_answer(row, 10), number=20000) * 50,
            base, new, args.rounds,
        )  # fmt: skip
        print(f"{name:14s} base {r['base_us']:6.2f} us  new {r['new_us']:6.2f} us  "
              f"new/base {r['new_over_base']:.2f}")  # fmt: skip
    out = {"base_revision": args.revision, "results": results, **machine()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
