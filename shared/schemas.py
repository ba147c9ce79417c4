"""The prediction API's wire format: the service writes it, the attacker parses it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

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


def answer_label(answer: dict[str, Any]) -> int:
    """The top class of one prediction in any output mode: what a client reads as the answer."""
    if answer.get("label") is not None:
        return int(answer["label"])
    if answer.get("top_k"):
        return int(max(answer["top_k"], key=lambda e: e["probability"])["index"])
    probs = answer["probabilities"]
    return int(max(range(len(probs)), key=probs.__getitem__))
