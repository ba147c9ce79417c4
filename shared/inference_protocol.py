"""The Open Inference Protocol's wire format (KServe v2, as Triton, KServe and MLServer speak it).

The service writes it and the attacker reads it (and the other way round), so it lives here
once: the request and response bodies, tensors as JSON `data` or through Triton's binary tensor
data extension (a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
tensors, little-endian, row-major), and the classification extension's `"<value>:<index>"`
strings. Nothing here knows about models or HTTP clients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, Field, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The header that gives the JSON part's length when binary tensors follow it."""

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""The protocol's fixed-size datatypes; BYTES (length-prefixed strings) is handled apart."""


class ProtocolError(ValueError):
    """A body that does not follow the protocol; the message says what is wrong, for a 400."""


class TensorSpec(BaseModel):
    """A tensor in a request or response: name, datatype, shape and its data or parameters."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[TensorSpec]


def _header_length(value: str | None, total: int) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) > total:
        raise ProtocolError(
            f"{HEADER_LENGTH} must be a byte count within the body ({total} bytes), got {value!r}"
        )
    return int(value)


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON document and the binary tensor bytes that follow it (empty without the header)."""
    length = _header_length(header_length, len(body))
    head = body if length is None else body[:length]
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError("the inference header must be a JSON object")
    return document, memoryview(body)[len(head) :]


M = TypeVar("M", bound=BaseModel)


def _parse(
    model: type[M], what: str, body: bytes, header_length: str | None
) -> tuple[M, memoryview]:
    document, binary = split_body(body, header_length)
    try:
        return model.model_validate(document), binary
    except ValidationError as exc:
        raise ProtocolError(
            f"not an inference {what}: " + "; ".join(_describe(e) for e in exc.errors()[:3])
        ) from None


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, memoryview]:
    return _parse(InferenceRequest, "request", body, header_length)


def parse_response(body: bytes, header_length: str | None) -> tuple[InferenceResponse, memoryview]:
    return _parse(InferenceResponse, "response", body, header_length)


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "body"
    return f"{where}: {error['msg']}"


def binary_size(tensor: TensorSpec) -> int | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"tensor {tensor.name!r}: binary_data_size must be a byte count")
    return size


def element_count(shape: Sequence[int]) -> int:
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise ProtocolError(f"a tensor shape must be non-negative integers, got {list(shape)}")
    return math.prod(shape)


class BinaryReader:
    """Hands out the binary tensors of a body in order, each by its `binary_data_size`."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.offset = data, 0

    def take(self, tensor: TensorSpec, size: int) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise ProtocolError(
                f"tensor {tensor.name!r} declares {size} binary bytes but the body holds "
                f"{len(self.data) - self.offset} more"
            )
        chunk, self.offset = self.data[self.offset : end], end
        return chunk

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise ProtocolError(
                f"{len(self.data) - self.offset} bytes after the last binary tensor"
            )


def decode_tensor(tensor: TensorSpec, reader: BinaryReader) -> np.ndarray:
    """A tensor's values as an array of its shape, from JSON `data` or the binary part.

    Binary fixed-size tensors are read without a copy (a read-only view of the body); BYTES
    tensors come back as an object array of `bytes`.
    """
    count = element_count(tensor.shape)
    size = binary_size(tensor)
    if tensor.datatype == "BYTES":
        if size is not None:
            return _decode_bytes(reader.take(tensor, size), count, tensor).reshape(tensor.shape)
        values = _flat(tensor)
        if len(values) != count or not all(isinstance(v, str) for v in values):
            raise ProtocolError(f"tensor {tensor.name!r}: expected {count} strings")
        return np.array([v.encode() for v in values] or [], dtype=object).reshape(tensor.shape)
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise ProtocolError(f"tensor {tensor.name!r}: unknown datatype {tensor.datatype!r}")
    if size is not None:
        if size != count * dtype.itemsize:
            raise ProtocolError(
                f"tensor {tensor.name!r}: {size} binary bytes for shape {tensor.shape} of "
                f"{tensor.datatype} (expected {count * dtype.itemsize})"
            )
        return np.frombuffer(reader.take(tensor, size), dtype=dtype).reshape(tensor.shape)
    values = _flat(tensor)
    if len(values) != count:
        raise ProtocolError(
            f"tensor {tensor.name!r}: {len(values)} values for shape {tensor.shape}"
        )
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise ProtocolError(f"tensor {tensor.name!r}: the data are not numbers") from None
    if count and array.dtype.kind not in ("b" if dtype.kind == "b" else "biuf"):
        raise ProtocolError(f"tensor {tensor.name!r}: the data are not {tensor.datatype} values")
    if dtype.kind in "iu" and count and array.dtype.kind == "f":
        raise ProtocolError(f"tensor {tensor.name!r}: {tensor.datatype} data must be integers")
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ProtocolError(
                f"tensor {tensor.name!r}: values outside the {tensor.datatype} range"
            )
    return array.astype(dtype).reshape(tensor.shape)


def _flat(tensor: TensorSpec) -> list:
    """JSON `data`, flat or nested as the shape (both are allowed), as one flat list."""
    if tensor.data is None:
        raise ProtocolError(f"tensor {tensor.name!r} has neither data nor binary_data_size")
    if not isinstance(tensor.data, list):
        raise ProtocolError(f"tensor {tensor.name!r}: data must be a list")
    flat, stack = [], [tensor.data]
    if not any(isinstance(v, list) for v in tensor.data):
        return tensor.data
    while stack:  # depth-first, keeping row-major order
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _decode_bytes(data: memoryview, count: int, tensor: TensorSpec) -> np.ndarray:
    out, offset = [], 0
    raw = bytes(data)
    for _ in range(count):
        if offset + 4 > len(raw):
            raise ProtocolError(f"tensor {tensor.name!r}: truncated BYTES element")
        n = int.from_bytes(raw[offset : offset + 4], "little")
        out.append(raw[offset + 4 : offset + 4 + n])
        offset += 4 + n
        if offset > len(raw):
            raise ProtocolError(f"tensor {tensor.name!r}: truncated BYTES element")
    if offset != len(raw):
        raise ProtocolError(f"tensor {tensor.name!r}: BYTES data longer than its shape")
    return np.array(out or [], dtype=object)


def encode_bytes(values: Sequence[bytes]) -> bytes:
    """BYTES elements in the binary extension: each a 4-byte little-endian length, then bytes."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


@dataclass
class OutTensor:
    """A tensor to send: JSON `data` or, with `binary`, raw bytes after the JSON header."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool = False


def encode_body(document: dict, tensors: Sequence[OutTensor], key: str) -> tuple[bytes, int | None]:
    """A request (`key="inputs"`) or response (`"outputs"`) body and its JSON header's length.

    The length is None when no tensor is binary: then the body is plain JSON.
    """
    entries, chunks = [], []
    for t in tensors:
        shape = list(t.array.shape)
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": shape}
        if t.binary:
            if t.datatype == "BYTES":
                raw = encode_bytes([bytes(v) for v in t.array.reshape(-1)])
            else:
                raw = np.ascontiguousarray(t.array, dtype=DTYPES[t.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif t.datatype == "BYTES":
            entry["data"] = [bytes(v).decode() for v in t.array.reshape(-1)]
        else:
            entry["data"] = np.ascontiguousarray(t.array, dtype=DTYPES[t.datatype]).reshape(-1)
        entries.append(entry)
    head = orjson.dumps({**document, key: entries}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def classification_entry(value: float, index: int) -> bytes:
    """The classification extension's `"<value>:<index>"` (Triton's format, no label file)."""
    return f"{value!r}:{index}".encode()


def parse_classification(entry: bytes | str) -> tuple[float, int]:
    """(value, index) of a `"<value>:<index>[:<label>]"` string."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    parts = text.split(":", 2)
    try:
        return float(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ProtocolError(f"not a classification entry '<value>:<index>': {text!r}") from None
