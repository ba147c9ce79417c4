"""The Open Inference Protocol (KServe v2) on the victim service, beside /v1.

`GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}[/versions/1]`,
`.../ready`, and `POST .../infer` with one image tensor: UINT8 NHWC pixels or FP32 NCHW values
in [0, 1], at the model's input size, as JSON `data` or through the binary tensor data
extension (which skips image decoding altogether). Answers follow the configured granularity:
`probabilities` as an FP32 tensor (probs), through the classification extension's
`"<value>:<index>"` strings (topk: at most `VICTIM_TOP_K` of them), or `label` as INT64 (label).
A row a defense answers with its label only comes as that label's one-hot vector (it discloses
exactly the label). Every request goes through the same `answer` as /v1/predict: API keys, rate
limits, micro-batching, defenses and metrics are shared, not copied.
"""

# no `from __future__ import annotations`: FastAPI must see `client_dep` (a local) at def time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from shared.inference_protocol import (
    HEADER_LENGTH,
    BinaryReader,
    OutTensor,
    ProtocolError,
    RequestedOutput,
    classification_entry,
    decode_tensor,
    encode_body,
    parse_request,
)
from shared.pipeline import Blackbox
from shared.schemas import ProtocolErrorBody
from victim_service.answering import Answer
from victim_service.errors import ApiError
from victim_service.settings import VictimSettings

VERSION = "1"
INPUT = "images"
EXTENSIONS = ["binary_tensor_data", "classification"]


def _bad(message: str, kind: str = "bad_request") -> ApiError:
    return ApiError(400, kind, message)


class OutputPlan:
    """What a request asked for, checked against what the granularity allows to disclose."""

    def __init__(self, settings: VictimSettings, num_classes: int) -> None:
        self.mode, self.top_k, self.num_classes = settings.output, settings.top_k, num_classes

    @property
    def name(self) -> str:
        return "label" if self.mode == "label" else "probabilities"

    def metadata(self) -> dict:
        if self.mode == "label":
            return {"name": "label", "datatype": "INT64", "shape": [-1, 1]}
        if self.mode == "topk":
            k = min(self.top_k, self.num_classes)
            return {"name": "probabilities", "datatype": "BYTES", "shape": [-1, k]}
        return {"name": "probabilities", "datatype": "FP32", "shape": [-1, self.num_classes]}

    def resolve(self, requested: list[RequestedOutput] | None, binary_default: bool) -> list:
        """[(name, classification k or None, binary)] for the answer; 400 for what it withholds."""
        if not requested:
            k = min(self.top_k, self.num_classes) if self.mode == "topk" else None
            return [(self.name, k, binary_default)]
        plan = []
        for out in requested:
            params = out.parameters or {}
            if out.name != self.name:
                raise _bad(
                    f"unknown output {out.name!r}; this model's output is {self.name!r}",
                    "unknown_output",
                )
            k = params.get("classification")
            if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
                raise _bad("the classification parameter must be a positive integer")
            if self.mode == "label" and k is not None:
                raise _bad(
                    "this model discloses labels only: ask output 'label' without classification",
                    "withheld",
                )
            if self.mode == "topk":
                limit = min(self.top_k, self.num_classes)
                if k is None:
                    k = limit
                elif k > limit:
                    raise _bad(
                        f"this model discloses its top {limit} classes only; "
                        f"ask classification <= {limit}",
                        "withheld",
                    )
            if k is not None and k > self.num_classes:
                raise _bad(f"classification {k} is more than the {self.num_classes} classes")
            binary = params.get("binary_data", binary_default)
            plan.append((out.name, k, bool(binary)))
        return plan


def _rows_to_probs(rows: list[dict], num_classes: int) -> np.ndarray:
    """(N, C) float64 of the disclosed vectors; a label-only row is that label's one-hot."""
    out = np.zeros((len(rows), num_classes))
    for i, row in enumerate(rows):
        if row.get("probabilities") is not None:
            out[i] = row["probabilities"]
        else:
            out[i, row["label"]] = 1.0
    return out


def _classification(rows: list[dict], k: int, num_classes: int) -> np.ndarray:
    """(N, k) `"<value>:<index>"` entries, highest first; ties broken by index like /v1."""
    out = np.empty((len(rows), k), dtype=object)
    dense = None
    for i, row in enumerate(rows):
        if row.get("top_k") is not None:
            pairs = [(e["probability"], e["index"]) for e in row["top_k"][:k]]
        else:
            if dense is None:
                dense = _rows_to_probs(rows, num_classes)
            order = np.argsort(-dense[i], kind="stable")[:k]
            pairs = [(float(dense[i, j]), int(j)) for j in order]
        out[i] = [classification_entry(v, j) for v, j in pairs]
    return out


def _outputs(rows: list, plan: list, num_classes: int) -> list[OutTensor]:
    # rows as /v1 writes them: dicts, or typed answers that know their /v1 wire form
    rows = [row.to_wire() if hasattr(row, "to_wire") else row for row in rows]
    tensors = []
    for name, k, binary in plan:
        if name == "label":
            labels = np.asarray([[row["label"]] for row in rows], dtype=np.int64)
            tensors.append(OutTensor(name, "INT64", labels, binary))
        elif k is not None:
            tensors.append(OutTensor(name, "BYTES", _classification(rows, k, num_classes), binary))
        else:
            probs = _rows_to_probs(rows, num_classes).astype(np.float32)
            tensors.append(OutTensor(name, "FP32", probs, binary))
    return tensors


def images_from_tensor(tensor: Any, array: np.ndarray, size: int, max_images: int) -> np.ndarray:
    """(N, S, S, 3) images for the pipeline: uint8 pixels, or float32 values in [0, 1]."""
    if tensor.datatype == "UINT8":
        expected = f"[N, {size}, {size}, 3]"
        ok = array.ndim == 4 and array.shape[1:] == (size, size, 3)
    elif tensor.datatype == "FP32":
        expected = f"[N, 3, {size}, {size}]"
        ok = array.ndim == 4 and array.shape[1:] == (3, size, size)
    else:
        raise ApiError(
            400,
            "unsupported_datatype",
            f"input {tensor.name!r} is {tensor.datatype}; send UINT8 [N, {size}, {size}, 3] "
            f"pixels or FP32 [N, 3, {size}, {size}] values in [0, 1]",
        )
    if not ok:
        raise ApiError(
            400,
            "bad_shape",
            f"a {tensor.datatype} input must have shape {expected}, got {list(array.shape)}",
        )
    if array.shape[0] == 0:
        raise ApiError(422, "no_images", "the request holds no images")
    if array.shape[0] > max_images:
        raise ApiError(
            413,
            "too_many_images",
            f"{array.shape[0]} images in one request; the limit is {max_images}",
        )
    if tensor.datatype == "UINT8":
        return np.array(array)  # a writable copy of the body's bytes, for torch.from_numpy
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ApiError(400, "out_of_range", "FP32 input values must be finite and in [0, 1]")
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def documented(*statuses: int) -> dict:
    """`responses=` for the refusals a route really answers, in the protocol's error shape."""
    return {status: {"model": ProtocolErrorBody} for status in statuses}


MODEL_REFUSALS = (404, 503)
"""Unknown model or version; the model not loaded (yet, or any more while shutting down)."""
INFER_REFUSALS = (400, 403, 404, 413, 415, 422, 429, 503)
"""Malformed tensors or parameters, defenses, unknown model, size limits, media type or
encoding, no images, the rate limit, shutting down: /v1/predict's refusals, in this shape."""


def v2_router(settings: VictimSettings, client_dep: Any, answer: Answer) -> APIRouter:
    """The /v2 routes; `client_dep` authenticates like /v1, `answer` is /v1's way to answers."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe v2)"])

    def blackbox(request: Request) -> Blackbox:
        return request.app.state.blackbox

    def check_model(name: str, version: str | None) -> None:
        if name != settings.model_name:
            raise ApiError(
                404,
                "model_not_found",
                f"unknown model {name!r}; this server serves {settings.model_name!r}",
            )
        if version is not None and version != VERSION:
            raise ApiError(404, "version_not_found", f"model {name!r} has version {VERSION!r} only")

    def not_ready() -> ApiError:
        return ApiError(503, "not_ready", "the model is not loaded yet")

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict:
        return {"name": "extraction-testbed", "version": "1", "extensions": EXTENSIONS}

    @router.get("/health/live", summary="Server live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", summary="Server ready (model loaded)", responses=documented(503))
    async def ready(request: Request) -> dict:
        if not request.app.state.ready:
            raise not_ready()
        return {"ready": True}

    async def model_metadata(
        request: Request, name: str, _: client_dep, version: str | None = None
    ) -> dict:
        check_model(name, version)
        if not request.app.state.ready:
            raise not_ready()
        box = blackbox(request)
        size = box.input_size
        plan = OutputPlan(settings, box.model.num_classes)
        return {
            "name": settings.model_name,
            "versions": [VERSION],
            "platform": "extraction-testbed",
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, size, size, 3]}],
            "outputs": [plan.metadata()],
            "parameters": {
                "output": settings.output,
                "num_outputs": box.model.num_classes,
                "top_k": settings.top_k if settings.output == "topk" else None,
                "round_decimals": settings.round_decimals,
                "max_images_per_request": settings.max_images,
                "max_body_bytes": settings.max_body_bytes,
                "also_accepts": {"name": INPUT, "datatype": "FP32", "shape": [-1, 3, size, size]},
            },
        }

    async def model_ready(
        request: Request, name: str, _: client_dep, version: str | None = None
    ) -> dict:
        check_model(name, version)
        if not request.app.state.ready:
            raise not_ready()
        return {"name": name, "ready": True}

    async def infer(request: Request, client: str, name: str, version: str | None) -> Response:
        check_model(name, version)
        plan: list = []
        request_id: str | None = None
        box = blackbox(request)

        async def read() -> tuple[int, np.ndarray]:
            nonlocal plan, request_id
            encoding = request.headers.get("content-encoding", "identity").lower()
            if encoding not in ("identity", ""):
                raise ApiError(
                    415, "unsupported_encoding", f"content-encoding {encoding!r} is not accepted"
                )
            body = await request.body()
            try:
                parsed, binary = parse_request(body, request.headers.get(HEADER_LENGTH))
                if len(parsed.inputs) != 1 or parsed.inputs[0].name != INPUT:
                    names = [t.name for t in parsed.inputs]
                    raise ProtocolError(f"expected one input named {INPUT!r}, got {names}")
                reader = BinaryReader(binary)
                tensor = parsed.inputs[0]
                array = decode_tensor(tensor, reader)
                reader.finish()
            except ProtocolError as exc:
                raise _bad(str(exc), "invalid_request") from None
            request_id = parsed.id
            binary_default = bool((parsed.parameters or {}).get("binary_data_output", False))
            plan = OutputPlan(settings, box.model.num_classes).resolve(
                parsed.outputs, binary_default
            )
            images = images_from_tensor(tensor, array, box.input_size, settings.max_images)
            return len(images), images

        rows = await answer(request, client, read)
        tensors = _outputs(rows, plan, box.model.num_classes)
        document: dict = {"model_name": settings.model_name, "model_version": VERSION}
        if request_id is not None:
            document["id"] = request_id
        body, header_length = encode_body(document, tensors, "outputs")
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(
            body,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(header_length)},
        )

    async def infer_route(
        request: Request, name: str, client: client_dep, version: str | None = None
    ) -> Response:
        """One image tensor in, the configured granularity out (see the module docstring)."""
        return await infer(request, client, name, version)

    # every model route with and without /versions/{version}, as the protocol has them
    for suffix in ("", "/versions/{version}"):
        path = "/models/{name}" + suffix
        router.add_api_route(path, model_metadata, methods=["GET"], summary="Model metadata",
                             responses=documented(*MODEL_REFUSALS))  # fmt: skip
        router.add_api_route(path + "/ready", model_ready, methods=["GET"], summary="Model ready",
                             responses=documented(*MODEL_REFUSALS))  # fmt: skip
        router.add_api_route(
            path + "/infer", infer_route, methods=["POST"], summary="Inference",
            response_class=Response, responses=documented(*INFER_REFUSALS),
        )  # fmt: skip
    return router
