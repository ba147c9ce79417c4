"""Benign clients of a live service: their accuracy through the defended API.

Benign clients talk HTTP like any other (one API key each, so stateful defenses such as PRADA
keep one record per client); a refused request (403 `query_refused`) answers none of its images.
"""

from __future__ import annotations

import httpx
import numpy as np

from shared.imaging import encode_image
from shared.schemas import answer_label, parse_answer


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
    clients = [httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=120) for key in keys]
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
