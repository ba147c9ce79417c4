"""The prediction API's wire format: the service writes it, the attacker parses it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from shared.errors import TestbedError

OutputMode = Literal["probs", "topk", "label"]


class TopKEntry(BaseModel):
    index: int
    probability: float


class Prediction(BaseModel):
    """One image's answer; which fields are set depends on the output mode."""

    probabilities: list[float] | None = None
    top_k: list[TopKEntry] | None = None
    label: int | None = None


class PredictResponse(BaseModel):
    output: OutputMode
    predictions: list[Prediction]


class PredictJSONRequest(BaseModel):
    images: list[str] = Field(description="base64-encoded image files (PNG, JPEG, ...)")


class ModelInfo(BaseModel):
    """What a public API discloses: nothing about architecture or training data."""

    num_outputs: int
    input_size: int
    output: OutputMode
    top_k: int | None = None
    round_decimals: int | None = None
    max_images_per_request: int
    max_body_bytes: int


class ErrorDetail(BaseModel):
    kind: str
    message: str
    position: int | None = Field(None, description="index of the offending image, if any")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ProtocolErrorBody(BaseModel):
    """A refusal under /v2: the Open Inference Protocol's `{"error": message}`, plus our facts."""

    error: str
    kind: str
    position: int | None = None


class AnswerError(TestbedError):
    """A prediction row that is not a valid answer (malformed, out of range, NaN, negative)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One image's answer, typed: the label is always known; top-k and probabilities when disclosed.

    The one representation every reader uses (service, store, strategies, transfer set,
    evaluators). It never invents what the API did not disclose: `disclosed()` marks the known
    classes; only `target()` turns a bare label into a hard (one-hot) training label, as Copycat
    trains on labels.
    """

    num_outputs: int
    label: int
    probabilities: tuple[float, ...] | None = None
    top_k: tuple[tuple[int, float], ...] | None = None
    """(index, probability) pairs, most probable first, as the API listed them."""

    @property
    def mode(self) -> OutputMode:
        if self.probabilities is not None:
            return "probs"
        return "topk" if self.top_k is not None else "label"

    def disclosed(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, known): the disclosed probability of each known class; 0 where unknown.

        A bare label discloses no probability at all: every class is unknown.
        """
        values = np.zeros(self.num_outputs, dtype=np.float64)
        known = np.zeros(self.num_outputs, dtype=bool)
        if self.probabilities is not None:
            values[:] = self.probabilities
            known[:] = True
        elif self.top_k is not None:
            for index, probability in self.top_k:
                values[index], known[index] = probability, True
        return values, known

    def target(self) -> tuple[np.ndarray, np.ndarray]:
        """(vector, known) to train on: probabilities renormalized (rounding leaves sums off by
        a little), top-k as disclosed with its mask, a bare label as a hard one-hot label."""
        values, known = self.disclosed()
        if self.probabilities is not None:
            total = values.sum()
            return (values / total if total > 0 else values), known
        if self.top_k is not None:
            return values, known
        values[self.label] = 1.0
        return values, np.ones(self.num_outputs, dtype=bool)

    def to_wire(self) -> dict[str, Any]:
        """The `/v1/predict` JSON of this answer (unchanged wire format: one field per mode)."""
        if self.probabilities is not None:
            return {"probabilities": list(self.probabilities)}
        if self.top_k is not None:
            return {"top_k": [{"index": i, "probability": p} for i, p in self.top_k]}
        return {"label": self.label}


def _index(value: Any, num_outputs: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise AnswerError(f"malformed answer: {what} {value!r} is not an integer")
    if value < 0 or (num_outputs is not None and value >= num_outputs):
        bound = f"0..{num_outputs - 1}" if num_outputs is not None else ">= 0"
        raise AnswerError(f"malformed answer: {what} {value} is out of range {bound}")
    return int(value)


_NUMBERS = (int, float, np.number)
_MAX_PROBABILITY = 1 + 1e-6  # float noise in a sum that should be 1


def _probability(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, _NUMBERS):
        raise AnswerError(f"malformed answer: {what} {value!r} is not a number")
    p = float(value)
    if not 0.0 <= p <= _MAX_PROBABILITY:  # NaN fails both comparisons
        raise AnswerError(f"malformed answer: {what} {value!r} is not a probability in [0, 1]")
    return p


def _probabilities(values: Sequence[Any]) -> tuple[float, ...]:
    """The vector as floats; a JSON array of numbers in [0, 1] (every answer of a working API)
    is taken in one pass, anything else value by value, so the error names the value."""
    if all(type(p) is float and 0.0 <= p <= _MAX_PROBABILITY for p in values):
        return tuple(values)
    return tuple(_probability(p, "probability") for p in values)


def _rounding_slack(shown: list[float]) -> float:
    """How far above 1 the sum of a top-k may lie when its probabilities were rounded.

    Rounded to d decimals, each shown value is at most half a unit of the d-th decimal above the
    true one, so k of them may sum to 1 + k/2 * 10^-d: a service rounding to 2 decimals answers
    0.49, 0.49 and 0.03 for 0.486, 0.486 and 0.028, which the parser refused as summing to more
    than 1. d is read off the values as shown (the most decimals among them): a value rounded to
    d decimals never shows more, and an unrounded one shows 16 or 17, where the floor of 1e-4
    (float noise) is left."""
    decimals = max(-min(Decimal(repr(p)).as_tuple().exponent, 0) for p in shown)
    return max(1e-4, len(shown) * 0.5 * 10.0**-decimals)


def parse_answer(row: Any, num_outputs: int | None) -> Answer:
    """The one parser of a prediction row as the API returned it (a `Prediction` as JSON).

    Raises `AnswerError` (one line) for anything that is not a valid answer: no field set,
    indexes out of 0..num_outputs-1, repeated top-k indexes, NaN, negative or >1 probabilities,
    a probability vector of the wrong length. `num_outputs=None` (not known yet) takes the
    vector's length, or skips the upper bound on indexes.
    """
    if isinstance(row, Answer):
        return row
    if type(row) is not dict and not isinstance(row, Mapping):  # dict: skip the ABC's check
        raise AnswerError(f"malformed answer: {row!r} is not an object")
    probabilities, top_k, label = row.get("probabilities"), row.get("top_k"), row.get("label")
    if probabilities is not None:
        if type(probabilities) is not list and (
            not isinstance(probabilities, Sequence) or isinstance(probabilities, str)
        ):
            raise AnswerError("malformed answer: probabilities is not a list")
        if num_outputs is not None and len(probabilities) != num_outputs:
            raise AnswerError(
                f"malformed answer: {len(probabilities)} probabilities for {num_outputs} outputs"
            )
        if not probabilities:
            raise AnswerError("malformed answer: an empty probability vector")
        probs = _probabilities(probabilities)
        num_outputs = len(probs)
        derived = probs.index(max(probs))  # the first of equal maxima, as argmax
        return Answer(num_outputs, _label(label, num_outputs, derived), probabilities=probs)
    if top_k is not None:
        if not isinstance(top_k, Sequence) or isinstance(top_k, str) or not top_k:
            raise AnswerError("malformed answer: top_k is not a non-empty list")
        entries = []
        for entry in top_k:
            if not isinstance(entry, Mapping):
                raise AnswerError(f"malformed answer: top_k entry {entry!r} is not an object")
            entries.append(
                (
                    _index(entry.get("index"), num_outputs, "top_k index"),
                    _probability(entry.get("probability"), "top_k probability"),
                )
            )
        if len({i for i, _ in entries}) != len(entries):
            raise AnswerError("malformed answer: top_k repeats an index")
        if sum(p for _, p in entries) > 1 + _rounding_slack([p for _, p in entries]):
            raise AnswerError("malformed answer: top_k probabilities sum to more than 1")
        n = num_outputs if num_outputs is not None else max(i for i, _ in entries) + 1
        derived = max(entries, key=lambda e: e[1])[0]
        return Answer(n, _label(label, n, derived), top_k=tuple(entries))
    if label is not None:
        n = num_outputs if num_outputs is not None else _index(label, None, "label") + 1
        return Answer(n, _index(label, num_outputs, "label"))
    raise AnswerError(f"malformed answer: {dict(row)!r} has no probabilities, top_k or label")


def _label(label: Any, num_outputs: int, derived: int) -> int:
    return derived if label is None else _index(label, num_outputs, "label")


def answer_label(answer: Answer | Mapping[str, Any], num_outputs: int | None = None) -> int:
    """The top class of one prediction in any output mode: what a client reads as the answer."""
    return parse_answer(answer, num_outputs).label
