"""Reverse sigmoid (Lee et al. 2019): the formula replayed by hand, and no affine map undoes it."""

from __future__ import annotations

import math

import numpy as np
import torch

from defense.defenses.reverse_sigmoid import reverse_sigmoid
from shared.pipeline import AnswerBatch
from tests.test_defense_perturbations import make_batch
from victim_service.app import load_blackbox
from victim_service.settings import VictimSettings


def affine_residual(truth: torch.Tensor, answers: torch.Tensor) -> float:
    """Relative RMS error of the best affine map answers -> truth (least squares, intercept)."""
    a = np.hstack([answers.numpy(), np.ones((len(answers), 1))])
    y = truth.numpy()
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(np.linalg.norm(a @ coef - y) / np.linalg.norm(y - y.mean(axis=0)))


def served_steps(checkpoint, monkeypatch, **env: str):
    """The steps the service builds when only these VICTIM_* variables are set."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = VictimSettings(checkpoint=checkpoint, device="cpu", amp=False)
    return load_blackbox(settings).steps


def run(steps, batch: AnswerBatch) -> AnswerBatch:
    for step in steps:
        batch = step(batch)
    return batch


def test_switched_on_by_its_variable_alone_no_affine_map_recovers_the_truth(
    victim_checkpoint, monkeypatch
):
    """At the defaults (only the documented switch set), least squares from the answers back to
    the true vectors leaves a large error; at gamma = 1 the same fit is exact (the old default)."""
    batch = make_batch(3000)
    steps = served_steps(victim_checkpoint, monkeypatch, VICTIM_REVERSE_SIGMOID_BETA="0.7")
    assert [s.name for s in steps] == ["reverse_sigmoid"]
    defended = run(steps, batch).probs
    assert torch.equal(defended.argmax(1), batch.probs.argmax(1))
    assert affine_residual(batch.probs, defended) > 0.2

    control = served_steps(
        victim_checkpoint, monkeypatch, VICTIM_REVERSE_SIGMOID_BETA="0.7",
        VICTIM_REVERSE_SIGMOID_GAMMA="1",
    )  # fmt: skip
    assert affine_residual(batch.probs, run(control, batch).probs) < 1e-9


def by_hand(y: list[float], beta: float, gamma: float) -> list[float]:
    """r = beta (s(gamma s^-1(y)) - 1/2), y' = (y - r) / Z, written out with math only."""
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    r = [beta * (sig(gamma * math.log(v / (1 - v))) - 0.5) for v in y]
    raw = [v - rv for v, rv in zip(y, r, strict=True)]
    return [v / sum(raw) for v in raw]


def test_the_served_step_replays_the_paper_formula_on_a_hand_made_vector(
    victim_checkpoint, monkeypatch
):
    y = [0.6, 0.25, 0.1, 0.05]
    batch = make_batch(1, classes=4).replace(probs=torch.tensor([y], dtype=torch.float64))
    steps = served_steps(
        victim_checkpoint, monkeypatch, VICTIM_REVERSE_SIGMOID_BETA="0.8",
        VICTIM_REVERSE_SIGMOID_GAMMA="0.2",
    )  # fmt: skip
    out = run(steps, batch).probs[0].tolist()
    assert np.allclose(out, by_hand(y, 0.8, 0.2), rtol=0, atol=1e-12)
    assert out != y


def test_modelguards_setting_is_too_gentle_for_a_default():
    """The README's figures for ModelGuard's beta 0.008, gamma 0.2: a confident 10-class answer's
    top probability moves by 0.014 ([0.91, 9 x 0.01]) or 0.025 ([0.999, 9 x 0.000111]), the
    most any probability moves, against ART's default (beta 1.0, gamma 0.1)."""
    moves = []
    for y in ([0.91] + [0.01] * 9, [0.999] + [0.000111] * 9):
        p = torch.tensor([y], dtype=torch.float64)
        gentle = reverse_sigmoid(p, beta=0.008, gamma=0.2) - p
        assert int(gentle.abs().argmax()) == 0  # the top class moves most
        moves.append(round(float(gentle.abs().max()), 3))
        assert float((reverse_sigmoid(p) - p).abs().max()) > 10 * moves[-1]  # ART's default
    assert moves == [0.014, 0.025]
