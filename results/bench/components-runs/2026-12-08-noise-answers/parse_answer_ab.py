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
import statistics
import sys
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, module_at  # noqa: E402
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
        rounds: dict[str, list[float]] = {"base": [], "new": []}
        for _ in range(args.rounds):
            for side, module in (("base", base), ("new", new)):
                seconds = timeit.timeit(lambda m=module, r=row: m.parse_answer(r, 10), number=20000)
                rounds[side].append(seconds / 20000 * 1e6)
        b, n = statistics.median(rounds["base"]), statistics.median(rounds["new"])
        results[name] = {"base_us": b, "new_us": n, "new_over_base": n / b, "rounds": rounds}
        print(f"{name:14s} base {b:6.2f} us  new {n:6.2f} us  new/base {n / b:.2f}")
    out = {"base_revision": args.revision, "results": results, **machine()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
