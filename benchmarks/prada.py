"""PRADA through the real service: what it does to benign clients and to two attackers.

    python -m benchmarks.prada --victim /work/cache/victims/cifar10-cnn9.pt --json out.json

Starts the victim service in its own process on loopback with only `VICTIM_PRADA_THRESHOLD`
set (every other PRADA setting at its default; action `reject`), then sends four query streams,
each from its own API key (PRADA keeps one state per client), one image per request, in order:

- `benign_random`: the CIFAR-10 test set in a seeded random order;
- `benign_class_by_class`: the first images of each test class, class after class, the way a
  client uploading a folder sorted by class would;
- `knockoff_random`: Knockoff Nets' random strategy, natural images of the attacker's pool;
- `jbda`: Papernot et al.'s Jacobian-based augmentation, the attacker's own
  (`attacker.attacks.jbda`): a class-balanced seed set of test images, then each round a
  substitute trained on the API's labels so far and x + lambda * sign(dF_{O(x)}/dx) for every
  point so far (lambda 0.1; the queries double each round). It stops at its first refused
  query, as a client that gets no more labels must.

A refused query is a 403 `query_refused`. The result says, per stream, how many were refused
and after how many queries the first refusal came.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer

from attacker.attacks import Target, make_attack
from attacker.client import FatalAPIError
from attacker.store import answer_count
from benchmarks.common import write_json
from defense.defenses.prada import THRESHOLD
from shared.checkpoint import load_checkpoint
from shared.cli import friendly
from shared.datasets import load_dataset
from shared.imaging import encode_image
from victim_service.launch import service_process

STREAMS = ("benign_random", "benign_class_by_class", "knockoff_random", "jbda")


def send_stream(url: str, key: str, images: np.ndarray) -> dict:
    """One image per request, in order; the per-query refusals and the labels of the rest."""
    refused: list[bool] = []
    labels: list[int | None] = []
    with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=60) as client:
        for image in images:
            files = [("images", ("q.png", encode_image(image), "image/png"))]
            response = client.post("/v1/predict", files=files)
            if response.status_code == 403:
                refused.append(True)
                labels.append(None)
                continue
            response.raise_for_status()
            refused.append(False)
            labels.append(int(np.argmax(response.json()["predictions"][0]["probabilities"])))
    return {"refused": refused, "labels": labels}


def summarize(refused: list[bool]) -> dict:
    n = len(refused)
    first = next((i + 1 for i, r in enumerate(refused) if r), None)
    return {
        "queries": n,
        "refused": int(sum(refused)),
        "refused_fraction": sum(refused) / n if n else 0.0,
        "first_refused_query": first,
        "refused_fraction_after_first": (
            sum(refused[first - 1 :]) / (n - first + 1) if first is not None else None
        ),
    }


def jbda_stream(url: str, key: str, db: Path, params: dict) -> dict:
    """Papernot et al.'s JBDA (`attacker.attacks.jbda`) against the live API, one image per
    request, until its budget is answered or its first query is refused (a refused attacker
    gets no more labels to train its substitute on)."""
    target = Target(url=url, db=db, api_key=key, concurrency=1, batch_size=1, progress=False)
    refused = False
    try:
        make_attack("jbda", params).query(target)
    except FatalAPIError as exc:
        if exc.status != 403:
            raise
        refused = True
    answered = answer_count(db)
    return {
        "refused": [False] * answered + [True] * refused,
        "substitute_training_points": answered,
    }


def main(
    victim: Annotated[Path, typer.Option(help="the CIFAR-10 victim checkpoint")] = Path(
        "runs/cifar10-cnn9.pt"
    ),
    dataset: str = "cifar10-jpeg",
    pool: str = "tiny-imagenet-attacker",
    threshold: Annotated[float, typer.Option(help="PRADA's delta")] = THRESHOLD,
    benign: Annotated[int, typer.Option(help="test images in random order (0 = all)")] = 0,
    per_class: Annotated[int, typer.Option(help="images per class, class by class")] = 100,
    knockoff: Annotated[int, typer.Option(help="KnockoffNets random queries")] = 3000,
    jbda_seeds: Annotated[int, typer.Option(help="JBDA seed images (per class: /10)")] = 100,
    jbda_rounds: Annotated[int, typer.Option(help="augmentation rounds (queries double)")] = 4,
    jbda_lambda: float = 0.1,
    jbda_epochs: int = 10,
    streams: Annotated[str, typer.Option(help="comma-separated subset")] = ",".join(STREAMS),
    seed: int = 0,
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
) -> None:
    start = time.perf_counter()
    wanted = [s.strip() for s in streams.split(",") if s.strip()]
    _, card = load_checkpoint(victim)
    size = card.input_size
    test = load_dataset(dataset, "test", image_size=size, seed=seed)
    test_x, test_y = test.arrays(size), np.asarray(test.targets)
    rng = np.random.default_rng(seed)
    keys = {name: f"key-{name}" for name in STREAMS}
    env = {
        "VICTIM_CHECKPOINT": str(victim),
        "VICTIM_DEVICE": "cpu",
        "VICTIM_PRADA_THRESHOLD": str(threshold),
        "VICTIM_API_KEYS": ",".join(keys.values()),
    }
    results: dict = {
        "victim": str(victim),
        "victim_test_accuracy": card.test_accuracy,
        "dataset": dataset,
        "attack_pool": pool,
        "prada": {"threshold": threshold, "action": "reject", "other_settings": "defaults"},
        "one_image_per_request": True,
        "seed": seed,
        "streams": {},
    }
    with service_process(env, ready_timeout=600) as (url, _):
        for name in wanted:
            t0 = time.perf_counter()
            if name == "benign_random":
                order = rng.permutation(len(test_x))[: benign or None]
                out = send_stream(url, keys[name], test_x[order])
                extra = {"accuracy_of_answered": _accuracy(out, test_y[order])}
            elif name == "benign_class_by_class":
                idx = np.concatenate(
                    [np.flatnonzero(test_y == c)[:per_class] for c in np.unique(test_y)]
                )
                out = send_stream(url, keys[name], test_x[idx])
                extra = {"accuracy_of_answered": _accuracy(out, test_y[idx])}
            elif name == "knockoff_random":
                attack = load_dataset(pool, "train", image_size=size, seed=seed)
                pick = np.sort(rng.choice(len(attack), size=knockoff, replace=False))
                pick = rng.permutation(pick)
                out = send_stream(url, keys[name], attack.arrays(size, pick.tolist()))
                extra = {}
            elif name == "jbda":
                params = {"seed": seed, "seed_dataset": dataset, "seed_per_class": jbda_seeds // 10,
                          "rounds": jbda_rounds, "lam": jbda_lambda, "round_epochs": jbda_epochs,
                          "arch": "cnn5"}  # fmt: skip
                with tempfile.TemporaryDirectory() as tmp:
                    out = jbda_stream(url, keys[name], Path(tmp) / "jbda.sqlite", params)
                extra = {
                    "seeds": jbda_seeds // 10 * 10, "rounds": jbda_rounds, "lambda": jbda_lambda,
                    "substitute": "cnn5", "substitute_epochs_per_round": jbda_epochs,
                    "substitute_training_points": out["substitute_training_points"],
                    "attack": "attacker.attacks.jbda",
                }  # fmt: skip
            else:
                raise typer.BadParameter(f"unknown stream {name!r}; known: {', '.join(STREAMS)}")
            summary = summarize(out["refused"])
            results["streams"][name] = {**summary, **extra, "seconds": time.perf_counter() - t0}
            print(name, results["streams"][name], flush=True)
            if json_out is not None:  # a partial result survives an interrupted run
                json_out.write_text(json.dumps({**results, "partial": True}, indent=2) + "\n")
    results["seconds"] = time.perf_counter() - start
    write_json(json_out, results)


def _accuracy(out: dict, targets: np.ndarray) -> float | None:
    answered = [(lab, t) for lab, t in zip(out["labels"], targets, strict=True) if lab is not None]
    return sum(int(lab == t) for lab, t in answered) / len(answered) if answered else None


if __name__ == "__main__":
    typer.run(friendly(main))
