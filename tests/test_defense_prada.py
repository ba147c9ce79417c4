"""PRADA: an alarm on a synthetic (JBDA-like) attack stream, none on benign digit streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defense.defenses.prada import PradaDetector, PradaStep, shapiro_w
from shared.checkpoint import load_checkpoint
from shared.datasets import load_dataset
from shared.pipeline import Blackbox


@pytest.fixture(scope="module")
def victim(victim_checkpoint):
    model, card = load_checkpoint(victim_checkpoint)
    return model, card


def synthetic_attack(seeds: np.ndarray, rounds: int = 4, step: int = 8, seed: int = 0):
    """Jacobian-augmentation-like stream: every round adds a +-step copy of each image so far."""
    rng = np.random.default_rng(seed)
    pool, stream = [s.astype(np.int16) for s in seeds], []
    for _ in range(rounds):
        new = [np.clip(x + rng.choice([-step, step], size=x.shape), 0, 255) for x in pool]
        pool += new
        stream += new
    return np.stack(stream).astype(np.uint8)


def run_stream(model, images: np.ndarray, client: str, batch: int = 16, **kwargs):
    detector = PradaDetector(**{"threshold": 0.9, "history": 2000, **kwargs})
    blackbox = Blackbox(model, 32, [PradaStep(detector, "reject")])
    rejected = []
    for s in range(0, len(images), batch):
        chunk = images[s : s + batch]
        out = blackbox.answer(chunk, [client] * len(chunk))
        rejected += out.mask("rejected").tolist()
    return detector, rejected


def test_alarm_on_a_synthetic_attack_stream(victim):
    model, _ = victim
    train = load_dataset("digits", "train")
    first = [int(np.flatnonzero(train.targets == c)[0]) for c in range(10)]
    stream = synthetic_attack(train.arrays(32)[first], rounds=5)  # 310 queries
    detector, rejected = run_stream(model, stream, "attacker")
    state = detector.clients["attacker"]
    assert state.alarm and state.last_w < 0.9
    first = rejected.index(True)
    assert first >= 100  # no test before more than 100 distances (the paper's start)
    assert rejected[-1] and sum(rejected[first:]) > 0.9 * (len(rejected) - first)


def test_no_alarm_on_benign_in_distribution_streams(victim):
    model, _ = victim
    test = load_dataset("digits", "test").arrays(32)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(test))[:300]
        detector, rejected = run_stream(model, test[order], "benign")
        state = detector.clients["benign"]
        assert not state.alarm and not any(rejected), state.last_w
        assert state.last_w is not None and state.last_w > 0.9


def test_clients_are_tracked_separately_in_one_mixed_batch(victim):
    model, _ = victim
    train = load_dataset("digits", "train")
    first = [int(np.flatnonzero(train.targets == c)[0]) for c in range(10)]
    attack = synthetic_attack(train.arrays(32)[first])[:120]
    benign = load_dataset("digits", "test").arrays(32)[:120]
    mixed = np.stack([img for pair in zip(attack, benign, strict=True) for img in pair])
    clients = ["attacker", "benign"] * 120
    detector = PradaDetector(0.9)
    blackbox = Blackbox(model, 32, [PradaStep(detector, "reject")])
    out = blackbox.answer(mixed, clients)
    refused = out.mask("rejected").numpy()
    assert refused[0::2].any() and not refused[1::2].any()
    assert out.flags["prada"].tolist() == refused.tolist()


def test_batch_of_n_equals_n_batches_of_one(victim):
    model, _ = victim
    train = load_dataset("digits", "train")
    first = [int(np.flatnonzero(train.targets == c)[0]) for c in range(10)]
    stream = synthetic_attack(train.arrays(32)[first], rounds=5)
    clients = tuple(f"c{i % 2}" for i in range(len(stream)))
    batch = Blackbox(model, 32).answer(stream, clients)  # the model runs once; the step twice
    whole = PradaStep(PradaDetector(0.9, history=500), "reject")(batch).mask("rejected")
    step = PradaStep(PradaDetector(0.9, history=500), "reject")
    single = [step(row(batch, i)).mask("rejected")[0].item() for i in range(len(stream))]
    assert whole.tolist() == single and any(single)


def row(batch, i: int):
    return batch.replace(
        inputs=batch.inputs[i : i + 1], features=batch.features[i : i + 1],
        logits=batch.logits[i : i + 1], probs=batch.probs[i : i + 1],
        clients=batch.clients[i : i + 1],
    )  # fmt: skip


def test_memory_is_bounded_per_client_and_in_clients():
    detector = PradaDetector(0.9, min_queries=5, history=10, max_clients=3)
    g = torch.Generator().manual_seed(0)
    for i in range(60):
        image = torch.randint(0, 256, (48,), generator=g, dtype=torch.uint8)
        detector.observe(f"client{i % 5}", image, label=i % 2)
    assert len(detector.clients) == 3
    for state in detector.clients.values():
        assert state.images is not None and state.images.shape[0] == 10
        assert state.size <= 10
        assert all(len(v) <= 10 for v in state.distances.values())
        assert all(len(v) <= 10 for v in state.admitted.values())


def test_shapiro_w_of_a_constant_record_is_not_normal():
    assert shapiro_w(np.full(30, 0.5)) == 0.0
    assert shapiro_w(np.random.default_rng(0).normal(size=200)) > 0.95
