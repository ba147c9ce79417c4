"""The one typed answer and its one parser: every mode, round trips, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.pipeline import AnswerBatch, Granularity
from shared.schemas import Answer, AnswerError, answer_label, parse_answer


def test_each_mode_parses_to_a_label_and_only_what_was_disclosed():
    probs = parse_answer({"probabilities": [0.2, 0.5, 0.3]}, 3)
    assert (probs.mode, probs.label) == ("probs", 1)
    values, known = probs.disclosed()
    assert np.allclose(values, [0.2, 0.5, 0.3]) and known.all()

    top = parse_answer(
        {"top_k": [{"index": 2, "probability": 0.6}, {"index": 0, "probability": 0.0}]}, 4
    )
    assert (top.mode, top.label) == ("topk", 2)
    values, known = top.disclosed()
    # a disclosed class rounded to 0 stays 0 and known; undisclosed ones stay unknown
    assert values.tolist() == [0.0, 0.0, 0.6, 0.0] and known.tolist() == [True, False, True, False]
    target, mask = top.target()
    assert target.tolist() == [0.0, 0.0, 0.6, 0.0] and mask.tolist() == known.tolist()

    label = parse_answer({"label": 3}, 4)
    assert (label.mode, label.label) == ("label", 3)
    values, known = label.disclosed()
    assert not known.any() and not values.any()  # a label discloses no probability
    target, mask = label.target()
    assert target.tolist() == [0, 0, 0, 1] and mask.all()  # trained on as a hard label


def test_probabilities_are_renormalized_only_as_a_training_target():
    answer = parse_answer({"probabilities": [0.33, 0.33, 0.33]}, 3)  # rounded: sums to 0.99
    assert answer.disclosed()[0].sum() == pytest.approx(0.99)
    assert answer.target()[0].sum() == pytest.approx(1.0)
    assert answer.label == 0  # ties: the first maximum, like argmax


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"top_k": [{"index": 10, "probability": 0.5}]}, "out of range 0..9"),
        ({"top_k": [{"index": -1, "probability": 0.5}]}, "out of range"),
        ({"label": 10}, "label 10 is out of range"),
        ({"label": True}, "not an integer"),
        ({"label": "3"}, "not an integer"),
        ({"probabilities": [float("nan")] + [0.1] * 9}, "not a probability"),
        ({"probabilities": [-0.1] + [0.1] * 9}, "not a probability"),
        ({"probabilities": [1.5] + [0.0] * 9}, "not a probability"),
        ({"probabilities": [float("inf")] + [0.0] * 9}, "not a probability"),
        ({"probabilities": [True] + [0.0] * 9}, "True is not a number"),
        ({"probabilities": [0.1] * 9 + ["0.1"]}, "'0.1' is not a number"),
        ({"probabilities": "0.1"}, "not a list"),
        ({"probabilities": [0.5, 0.5]}, "2 probabilities for 10 outputs"),
        (
            {"top_k": [{"index": 1, "probability": 0.5}, {"index": 1, "probability": 0.4}]},
            "repeats an index",
        ),  # fmt: skip
        (
            {"top_k": [{"index": 1, "probability": 0.7}, {"index": 2, "probability": 0.7}]},
            "sum to more than 1",
        ),  # fmt: skip
        ({"top_k": []}, "non-empty"),
        ({"top_k": [{"index": 1}]}, "not a number"),
        ({}, "has no probabilities, top_k or label"),
        ([0.1, 0.9], "not an object"),
    ],
)
def test_malformed_rows_get_one_clear_line(row, message):
    with pytest.raises(AnswerError, match=message) as info:
        parse_answer(row, 10)
    assert "\n" not in str(info.value)


def test_probabilities_of_every_number_type_parse_alike():
    """JSON floats take the one-pass path; ints, numpy scalars and tuples the value-by-value
    one: the same answer either way, the first of equal maxima as the label."""
    floats = parse_answer({"probabilities": [0.0, 0.5, 0.0, 0.5]}, 4)
    assert floats.probabilities == (0.0, 0.5, 0.0, 0.5) and floats.label == 1
    numpy = [np.float32(v) for v in (0, 0.5, 0, 0.5)]
    for values in ([0, 0.5, 0, 0.5], (0.0, 0.5, 0.0, 0.5), numpy):
        answer = parse_answer({"probabilities": values}, 4)
        assert answer == floats and all(type(p) is float for p in answer.probabilities)


def test_answer_label_reads_every_mode():
    assert answer_label({"probabilities": [0.1, 0.7, 0.2]}) == 1
    assert answer_label({"top_k": [{"index": 4, "probability": 0.9}]}, 5) == 4
    assert answer_label({"label": 2}, 3) == 2
    assert answer_label(Answer(3, 2)) == 2
    with pytest.raises(AnswerError):
        answer_label({"label": 3}, 3)


def _batch(logits: np.ndarray, label_only: np.ndarray) -> AnswerBatch:
    t = torch.from_numpy(logits)
    return AnswerBatch(
        inputs=torch.zeros(len(t), 3, 2, 2), features=t, logits=t,
        probs=torch.softmax(t.double(), 1), clients=("c",) * len(t),
        label_only=torch.from_numpy(label_only),
    )  # fmt: skip


def test_a_rounded_top_k_that_sums_past_1_by_its_rounding_is_an_answer():
    """Hypothesis found it in a clean clone's CI run: a service rounding to 2 decimals answers
    0.49, 0.49, 0.03 for 0.486, 0.486, 0.028 (sum 1.01), and the parser refused its own
    service's answer. Rounded to d decimals, k values may sum to 1 + k/2 * 10^-d; beyond that,
    or unrounded, a sum past 1 is still refused."""
    logits = np.log(np.array([[0.028, 0.486, 0.486]]))
    batch = _batch(logits.astype(np.float32), np.zeros(1, dtype=bool))
    (answer,) = Granularity("topk", top_k=3, decimals=2).format(batch)
    assert [p for _, p in answer.top_k] == [0.49, 0.49, 0.03]
    assert parse_answer(answer.to_wire(), 3) == answer

    def top_k(*probabilities: float) -> dict:
        return {"top_k": [{"index": i, "probability": p} for i, p in enumerate(probabilities)]}

    assert parse_answer(top_k(0.4, 0.4, 0.3), 3).label == 0  # 1 decimal: up to 1.15
    assert parse_answer(top_k(0.9, 0.1, 0.1), 3).label == 0  # 0.86, 0.07, 0.07 at 1 decimal
    assert parse_answer(top_k(0.49, 0.49, 0.03), 3).label == 0
    for refused in (top_k(0.6, 0.6), top_k(0.5, 0.5, 0.2), top_k(0.495, 0.495, 0.0301),
                    top_k(0.6000000238418579, 0.5)):  # fmt: skip
        with pytest.raises(AnswerError, match="sum to more than 1"):
            parse_answer(refused, 3)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda c: arrays(
            np.float32,
            st.tuples(st.integers(1, 8), st.just(c)),
            elements=st.floats(-30, 30, width=32),
        )  # fmt: skip
    ),
    st.sampled_from(["probs", "topk", "label"]),
    st.sampled_from([None, 0, 2]),
    st.data(),
)
def test_what_the_service_formats_parses_back_to_the_same_answer(logits, mode, decimals, data):
    """The service's `Granularity.format` and the clients' `parse_answer` agree on every row,
    through the unchanged wire format."""
    n = len(logits)
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    answers = Granularity(mode, top_k=3, decimals=decimals).format(_batch(logits, mask))
    for answer in answers:
        wire = answer.to_wire()
        assert len(wire) == 1 and set(wire) <= {"probabilities", "top_k", "label"}
        assert parse_answer(wire, logits.shape[1]) == answer
        assert math.isfinite(sum(answer.disclosed()[0]))
