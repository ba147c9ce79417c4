"""Output perturbations on hand-made batches: valid distributions, argmax kept, batch-correct."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defense.defenses.noise import GaussianNoiseStep
from defense.defenses.reverse_sigmoid import ReverseSigmoidStep, reverse_sigmoid
from defense.perturbations import apply_action, keep_argmax, renormalize, row_uniforms, shuffle
from shared.pipeline import AnswerBatch, Granularity


def make_batch(n: int, classes: int = 10, seed: int = 0, scale: float = 3.0) -> AnswerBatch:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * scale
    return AnswerBatch(
        inputs=torch.rand(n, 3, 8, 8, generator=g),
        features=torch.zeros(n, 4),
        logits=logits,
        probs=torch.softmax(logits.double(), dim=1),
        clients=tuple(f"c{i % 3}" for i in range(n)),
    )


def rows(batch: AnswerBatch, i: int) -> AnswerBatch:
    return AnswerBatch(
        inputs=batch.inputs[i : i + 1],
        features=batch.features[i : i + 1],
        logits=batch.logits[i : i + 1],
        probs=batch.probs[i : i + 1],
        clients=batch.clients[i : i + 1],
    )


def assert_distribution(p: torch.Tensor) -> None:
    assert p.dtype == torch.float64
    assert (p >= 0).all() and torch.allclose(p.sum(dim=1), torch.ones(len(p), dtype=p.dtype))


STEPS = [
    ReverseSigmoidStep(beta=0.7, gamma=0.5),
    ReverseSigmoidStep(beta=3.0, gamma=2.0),  # strong enough to reorder classes before the fix
    GaussianNoiseStep(std=0.3, seed=4),
]


def test_each_step_keeps_argmax_and_gives_distributions():
    batch = make_batch(64)
    for step in STEPS:
        out = step(batch)
        assert_distribution(out.probs)
        assert torch.equal(out.probs.argmax(1), batch.probs.argmax(1)), step
        assert not torch.allclose(out.probs, batch.probs), "the step must perturb"


def test_reverse_sigmoid_matches_the_formula_where_order_is_kept():
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    beta, gamma = 0.5, 1.0  # gamma 1: sigmoid(logit(y)) = y, so y' = (1 - beta) y + beta / 2
    expected = (1 - beta) * p + beta / 2
    assert torch.allclose(reverse_sigmoid(p, beta, gamma), expected / expected.sum())


def test_strong_reverse_sigmoid_would_reorder_but_argmax_is_restored():
    p = torch.tensor([[0.90, 0.06, 0.04]], dtype=torch.float64)
    raw = p - 3.0 * (torch.sigmoid(2.0 * torch.log(p / (1 - p))) - 0.5)
    assert raw.clamp_min(0).argmax() != 0  # the raw formula moves the top class
    out = reverse_sigmoid(p, 3.0, 2.0)
    assert out.argmax() == 0
    assert_distribution(out)


def test_renormalize_clips_at_zero_and_a_row_without_mass_becomes_uniform():
    probs = torch.tensor([[0.5, -0.1, 0.6], [-0.2, 0.0, 0.0], [0.2, 0.2, 0.2]])
    out = renormalize(probs)
    assert out[0].tolist() == pytest.approx([0.5 / 1.1, 0.0, 0.6 / 1.1])
    assert out[1].tolist() == pytest.approx([1 / 3] * 3)  # nothing left to rescale
    assert out[2].tolist() == pytest.approx([1 / 3] * 3)


def test_keep_argmax_swaps_and_breaks_ties_toward_the_original_class():
    original = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5]], dtype=torch.float64)
    perturbed = torch.tensor([[0.5, 0.2, 0.3], [0.4, 0.4, 0.2]], dtype=torch.float64)
    out = keep_argmax(original, perturbed)
    assert out.argmax(1).tolist() == [1, 2]
    assert torch.allclose(out[0], torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
    assert_distribution(out)


def test_noise_is_the_same_for_the_same_image_and_differs_between_images():
    batch = make_batch(4)
    twice = batch.replace(
        inputs=torch.cat([batch.inputs[:1], batch.inputs[:1]]),
        probs=torch.cat([batch.probs[:1], batch.probs[:1]]),
        logits=batch.logits[:2],
        features=batch.features[:2],
        clients=batch.clients[:2],
    )
    out = GaussianNoiseStep(std=0.2, seed=1)(twice).probs
    assert torch.equal(out[0], out[1])
    other_seed = GaussianNoiseStep(std=0.2, seed=2)(twice).probs
    assert not torch.equal(out[0], other_seed[0])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    classes=st.integers(2, 12),
    seed=st.integers(0, 10_000),
    scale=st.floats(0.0, 20.0),
    which=st.integers(0, len(STEPS) - 1),
)
def test_batch_of_n_equals_n_batches_of_one(n, classes, seed, scale, which):
    step = STEPS[which]
    batch = make_batch(n, classes, seed, scale)
    whole = step(batch).probs
    single = torch.cat([step(rows(batch, i)).probs for i in range(n)])
    assert torch.allclose(whole, single, rtol=0, atol=1e-12)
    assert_distribution(whole)
    assert torch.equal(whole.argmax(1), batch.probs.argmax(1))


def test_row_uniforms_are_uniform_and_depend_only_on_the_row():
    batch = make_batch(50)
    u = row_uniforms(batch.inputs, 0, "t", 200)
    assert u.shape == (50, 200) and (u > 0).all() and (u < 1).all()
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert torch.equal(row_uniforms(batch.inputs[3:4], 0, "t", 200)[0], u[3])
    assert not torch.equal(row_uniforms(batch.inputs, 1, "t", 200), u)


def test_shuffle_permutes_only_the_flagged_rows():
    batch = make_batch(6)
    mask = torch.tensor([True, False, True, False, False, True])
    out = shuffle(batch.probs, mask, row_uniforms(batch.inputs, 0, "t", 10))
    assert torch.equal(out[~mask], batch.probs[~mask])
    for i in mask.nonzero().flatten().tolist():
        assert torch.equal(out[i].sort().values, batch.probs[i].sort().values)
    assert_distribution(out)
    assert not torch.equal(out[mask], batch.probs[mask])


def test_actions_reject_and_label_set_their_masks_and_granularity_obeys():
    batch = make_batch(4)
    flagged = torch.tensor([False, True, False, True])
    rejected = apply_action(batch, flagged, "reject", 0, "t")
    assert rejected.mask("rejected").tolist() == flagged.tolist()
    labelled = apply_action(batch, flagged, "label", 0, "t")
    formatted = Granularity("probs").wire(labelled)
    labels = batch.probs.argmax(1).tolist()
    assert formatted[1] == {"label": labels[1]} and formatted[3] == {"label": labels[3]}
    assert "probabilities" in formatted[0] and "probabilities" in formatted[2]
    assert apply_action(batch, torch.zeros(4, dtype=torch.bool), "reject", 0, "t") is batch


def test_rounding_and_top_k_granularity_keep_the_label_after_perturbation():
    """Rounding and top-k live in the granularity; after a perturbation they still tell the
    client the victim's label."""
    batch = ReverseSigmoidStep(0.7, 0.5)(make_batch(32))
    labels = batch.probs.argmax(1).tolist()
    rounded = Granularity("probs", decimals=2).wire(batch)
    top1 = Granularity("topk", top_k=1).wire(batch)
    for row, t, lab in zip(rounded, top1, labels, strict=True):
        probs = torch.tensor(row["probabilities"])
        assert probs[lab] == probs.max()  # rounding may tie, never overtake
        assert t["top_k"][0]["index"] == lab
