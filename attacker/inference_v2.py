"""The attacker's side of the Open Inference Protocol (KServe v2): Triton, KServe, MLServer.

What the attacker learns comes from the model's metadata (`GET /v2/models/{name}`): the input's
name, datatype and layout, and the output's datatype and shape, which say what is disclosed:
an FP32 vector (probabilities), BYTES `"<value>:<index>"` entries (top-k through the
classification extension) or an integer label. The victim service adds `parameters` with the
number of classes and its request limits; a third-party server that lacks them is read from the
shapes alone. Answers are converted to the /v1 wire format (`{"probabilities": [...]}`,
`{"top_k": [...]}` or `{"label": n}`), so that the transfer set, the parser and the trainers see
one format whatever the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import TestbedError
from shared.inference_protocol import (
    BinaryReader,
    OutTensor,
    ProtocolError,
    decode_tensor,
    encode_body,
    parse_classification,
    parse_response,
)
from shared.schemas import ModelInfo

FLOATS = ("FP16", "FP32", "FP64")
INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
UNLIMITED = 1 << 31


@dataclass(frozen=True)
class V2Model:
    """How to ask a v2 model and what its answers mean, from its metadata."""

    name: str
    input_name: str
    input_datatype: str
    """UINT8 (pixels) or FP32 (values in [0, 1])."""
    channels_first: bool
    input_size: int
    output_name: str
    output: str
    """probs, topk or label."""
    num_outputs: int
    top_k: int | None
    info: ModelInfo


def _fail(name: str, why: str) -> TestbedError:
    return TestbedError(f"model {name!r} cannot be queried as an image classifier: {why}")


def read_metadata(name: str, meta: dict[str, Any], batch_size: int) -> V2Model:
    """The query plan from a model's metadata; a clear error for a model this cannot query."""
    try:
        inputs, outputs = meta["inputs"], meta["outputs"]
        (tensor,) = inputs
        out = outputs[0]
        shape, datatype = [int(d) for d in tensor["shape"]], str(tensor["datatype"])
        out_shape, out_type = [int(d) for d in out["shape"]], str(out["datatype"])
    except (KeyError, TypeError, ValueError, IndexError):
        raise _fail(name, "its metadata has no single input and an output") from None
    params = meta.get("parameters") or {}
    if len(shape) != 4 or datatype not in ("UINT8", "FP32"):
        raise _fail(name, f"input {datatype} {shape} is not a UINT8 or FP32 image batch")
    channels_first = shape[1] == 3 and shape[3] != 3
    size = shape[2] if channels_first else shape[1]
    if size < 1:
        raise _fail(name, f"input shape {shape} has no fixed image size")
    num_outputs = params.get("num_outputs")
    if out_type in FLOATS:
        output, top_k, num_outputs = "probs", None, out_shape[-1]
    elif out_type == "BYTES":
        output, top_k = "topk", out_shape[-1]
    elif out_type in INTEGERS:
        output, top_k = "label", None
    else:
        raise _fail(name, f"output datatype {out_type} is not a score, top-k or label")
    if not isinstance(num_outputs, int) or num_outputs < 1:
        raise _fail(name, f"its {output} output does not say how many classes there are")
    limit = int(params.get("max_images_per_request") or batch_size)
    info = ModelInfo(
        num_outputs=num_outputs,
        input_size=size,
        output=output,  # type: ignore[arg-type]
        top_k=top_k,
        round_decimals=params.get("round_decimals"),
        max_images_per_request=limit,
        max_body_bytes=int(params.get("max_body_bytes") or UNLIMITED),
    )
    return V2Model(
        name, str(tensor["name"]), datatype, channels_first, size, str(out["name"]), output,
        num_outputs, top_k, info,
    )  # fmt: skip


def infer_body(model: V2Model, images: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The request body and headers for an (N, S, S, 3) uint8 batch."""
    array = images
    if model.input_datatype == "FP32":
        array = images.astype(np.float32) / np.float32(255)
    if model.channels_first:
        array = array.transpose(0, 3, 1, 2)
    parameters: dict[str, Any] = {"binary_data": binary}
    if model.output == "topk":
        parameters["classification"] = model.top_k
    document = {"outputs": [{"name": model.output_name, "parameters": parameters}]}
    tensor = OutTensor(model.input_name, model.input_datatype, array, binary)
    body, header_length = encode_body(document, [tensor], "inputs")
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return body, headers


def read_answers(model: V2Model, body: bytes, header_length: str | None, n: int) -> list[dict]:
    """One /v1-format answer per image from an inference response (ProtocolError if malformed)."""
    response, binary = parse_response(body, header_length)
    reader = BinaryReader(binary)
    found = None
    for tensor in response.outputs:
        array = decode_tensor(tensor, reader)
        if tensor.name == model.output_name:
            found = array
    if found is None:
        raise ProtocolError(f"the response has no output {model.output_name!r}")
    if found.shape[0] != n:
        raise ProtocolError(f"{found.shape[0]} answers for {n} images")
    rows = found.reshape(n, -1)
    if model.output == "probs":
        return [{"probabilities": row.astype(np.float64).tolist()} for row in rows]
    if model.output == "topk":
        answers = []
        for row in rows:
            pairs = [parse_classification(entry) for entry in row]
            answers.append({"top_k": [{"index": i, "probability": v} for v, i in pairs]})
        return answers
    return [{"label": int(row[0])} for row in rows]
