"""PRADA through the real service: what it does to benign clients and to two attackers.

    python -m benchmarks.prada --victim /work/cache/victims/cifar10-cnn9.pt --json out.json

Starts the victim service in its own process on loopback with only `VICTIM_PRADA_THRESHOLD`
set (every other PRADA setting at its default; action `reject`), then sends four query streams,
each from its own API key (PRADA keeps one state per client), one image per request, in order:

- `benign_random`: the CIFAR-10 test set in a seeded random order;
- `benign_class_by_class`: the first images of each test class, class after class, the way a
  client uploading a folder sorted by class would;
- `knockoff_random`: Knockoff Nets' random strategy, natural images of the attacker's pool;
- `jbda`: Papernot et al.'s Jacobian-based augmentation: a seed set of test images, then each
  round a substitute trained on the API's labels so far and x + lambda * sign(dF_{O(x)}/dx) for
  every point so far (lambda 0.1; the queries double each round). This stream is synthesized
  here (the attacker's own JBDA was not on main when this was written); refused queries give
  the attacker no label and are left out of its training set.

A refused query is a 403 `query_refused`. The result says, per stream, how many were refused
and after how many queries the first refusal came.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import torch
import typer

from benchmarks.common import write_json
from defense.defenses.prada import THRESHOLD
from shared.checkpoint import load_checkpoint
from shared.datasets import load_dataset
from shared.imaging import encode_image
from shared.models import create_model
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


def jbda_stream(
    url: str, key: str, seeds: np.ndarray, rounds: int, lam: float, epochs: int, seed: int
) -> dict:
    """Papernot et al.'s substitute training loop against the live API (see the module doc)."""
    torch.manual_seed(seed)
    substitute = create_model("cnn5", 10)
    optimizer = torch.optim.Adam(substitute.parameters(), lr=1e-3)
    points = seeds.astype(np.uint8)
    new = points
    known_x: list[np.ndarray] = []
    known_y: list[int] = []
    refused: list[bool] = []
    for rho in range(rounds + 1):
        answer = send_stream(url, key, new)
        refused += answer["refused"]
        for image, label in zip(new, answer["labels"], strict=True):
            if label is not None:
                known_x.append(image)
                known_y.append(label)
        if rho == rounds:
            break
        # train the substitute on every label so far
        x = torch.from_numpy(np.stack(known_x)).permute(0, 3, 1, 2).float() / 255
        y = torch.tensor(known_y)
        substitute.train()
        g = torch.Generator().manual_seed(seed + rho)
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=g).split(64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(substitute(x[batch]), y[batch]).backward()
                optimizer.step()
        # Jacobian augmentation of every point so far, along the substitute's gradient of the
        # victim's label (the substitute's own label where the API refused to give one)
        substitute.eval()
        xs = torch.from_numpy(points).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
        logits = substitute(xs)
        target = logits.argmax(1).detach()
        for i, lab in enumerate(_labels_in_order(points, known_x, known_y)):
            if lab is not None:
                target[i] = lab
        logits.gather(1, target[:, None]).sum().backward()
        step = lam * xs.grad.sign()
        augmented = (xs.detach() + step).clamp(0, 1)
        new = (augmented.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        points = np.concatenate([points, new])
    return {"refused": refused, "substitute_training_points": len(known_x)}


def _labels_in_order(points: np.ndarray, known_x: list, known_y: list) -> list[int | None]:
    """The API's label of each point (None where it was refused), by exact image match."""
    table = {x.tobytes(): y for x, y in zip(known_x, known_y, strict=True)}
    return [table.get(p.tobytes()) for p in points]


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
                # seeds from the end of the test set, balanced over classes
                tail = np.arange(len(test_x) - 1, -1, -1)
                seeds_idx = np.concatenate(
                    [tail[test_y[tail] == c][: jbda_seeds // 10] for c in np.unique(test_y)]
                )
                out = jbda_stream(
                    url, keys[name], test_x[seeds_idx], jbda_rounds, jbda_lambda, jbda_epochs, seed
                )
                extra = {
                    "seeds": int(len(seeds_idx)), "rounds": jbda_rounds, "lambda": jbda_lambda,
                    "substitute": "cnn5", "substitute_epochs_per_round": jbda_epochs,
                    "substitute_training_points": out["substitute_training_points"],
                    "synthesized_in_benchmark": True,
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
    typer.run(main)
