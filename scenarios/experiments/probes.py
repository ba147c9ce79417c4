"""Benign clients of a live service: their accuracy through the defended API (cached).

Benign clients talk HTTP like any other (one API key each, so stateful defenses such as PRADA
keep one record per client); a refused request (403 `query_refused`) answers none of its images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict

import httpx
import numpy as np

from scenarios.experiments.cache import artefact_key, cached_path, making
from scenarios.experiments.steps import SERVICE_READY_S, Say, VictimSpec, cached_victim
from shared.checkpoint import load_checkpoint
from shared.datasets import load_dataset
from shared.imaging import encode_image
from shared.schemas import answer_label, parse_answer
from victim_service.launch import preloaded_service


def benign_accuracy(
    url: str,
    images: np.ndarray,
    targets: np.ndarray,
    keys: list[str],
    batch_size: int = 8,
) -> dict:
    """Send the labelled `images` in order, batch after batch, round-robin over the benign
    clients `keys`; accuracy counts refused images as wrong (a benign user got no answer)."""
    correct = refused = 0
    alarmed: set[str] = set()
    tls = httpx.create_ssl_context()  # one for all: each client would load the CA bundle
    clients = [httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=120, verify=tls)
               for key in keys]  # fmt: skip
    try:
        for i, start in enumerate(range(0, len(images), batch_size)):
            key = keys[i % len(keys)]
            chunk = images[start : start + batch_size]
            files = [("images", (f"{j}.png", encode_image(im), "image/png")) for j, im in
                     enumerate(chunk)]  # fmt: skip
            response = clients[i % len(keys)].post("/v1/predict", files=files)
            if response.status_code == 403:
                refused += len(chunk)
                alarmed.add(key)
                continue
            response.raise_for_status()
            rows = response.json()["predictions"]
            labels = [answer_label(parse_answer(row, None)) for row in rows]
            correct += int(np.sum(np.asarray(labels) == targets[start : start + batch_size]))
    finally:
        for client in clients:
            client.close()
    n = len(images)
    return {
        "images": int(n),
        "clients": len(keys),
        "accuracy": correct / n,
        "refused": refused / n,
        "clients_refused": len(alarmed),
    }


def benign_set(victim: VictimSpec, images: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The benign clients' images (a seeded sample of the victim's test split; None: all of
    it) at the victim's input size, and their labels."""
    _, card = load_checkpoint(cached_victim(victim))
    test = load_dataset(victim.dataset, "test", image_size=card.input_size)
    order = np.random.default_rng(seed).permutation(len(test))[: images or None]
    return test.arrays(card.input_size, order.tolist()), np.asarray(test.targets)[order]


def benign_keys(clients: int) -> list[str]:
    """The benign clients' API keys (one record each in stateful defenses)."""
    return [f"benign-{i}" for i in range(clients)]


def cached_benign(
    victim: VictimSpec, env: Mapping[str, str], images: int | None, clients: int, seed: int,
    say: Say = lambda _: None,
) -> dict:  # fmt: skip
    """`benign_accuracy` through the victim served with `env` (its VICTIM_* settings), measured
    once per configuration."""
    spec = {"victim": artefact_key("victims", asdict(victim)), "env": dict(env), "images": images,
            "clients": clients, "seed": seed}  # fmt: skip
    path = cached_path("benign", spec, ".result.json")
    with making(path):
        if path.exists():
            return json.loads(path.read_text())
        x, y = benign_set(victim, images, seed)
        keys = benign_keys(clients)
        service_env = {"VICTIM_CHECKPOINT": str(cached_victim(victim)), **env,
                       "VICTIM_API_KEYS": ",".join(keys)}  # fmt: skip
        with preloaded_service(service_env, ready_timeout=SERVICE_READY_S) as url:
            say(f"  benign: {len(x)} test images from {clients} clients through {url}")
            result = benign_accuracy(url, x, y, keys)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result
