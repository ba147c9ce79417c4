"""The victim's prediction API.

Run as `uvicorn victim_service.app:create_app --factory` (settings from `VICTIM_*` variables).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from defense.registry import BuildContext, build_steps
from shared.checkpoint import load_checkpoint
from shared.device import resolve_device, usable_cpus
from shared.errors import TestbedError
from shared.imaging import ImageError, ImageTooLargeError, decode_image, resize
from shared.pipeline import Blackbox, Granularity
from shared.schemas import (
    ErrorBody,
    ModelInfo,
    PredictJSONRequest,
    PredictResponse,
    ProtocolErrorBody,
)
from victim_service.access import PUBLIC_PATHS, ApiKeyMiddleware
from victim_service.answering import ReadImages, json_response
from victim_service.batching import MicroBatcher, ServiceStopping
from victim_service.errors import V2_PREFIX, ApiError, install_error_handlers
from victim_service.limits import BodySizeLimitMiddleware, RateLimiter
from victim_service.logs import log_like_uvicorn
from victim_service.memory import tune_malloc
from victim_service.metrics import ServiceMetrics
from victim_service.multipart import boundary_of, split_images
from victim_service.settings import VictimSettings, read_settings
from victim_service.v2 import v2_router

IMAGE_CONTENT_TYPES = ("image/", "application/octet-stream")
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"


def load_blackbox(settings: VictimSettings) -> Blackbox:
    """The checkpoint, its defenses and its granularity as one black box (also used offline)."""
    device = resolve_device(settings.device)
    model, card = load_checkpoint(settings.checkpoint, device)
    model = model.to(memory_format=torch.channels_last)
    context = BuildContext(
        model, card, device, amp=settings.amp, seed=settings.seed, trace=settings.trace
    )
    steps = build_steps(settings.defenses, context)
    granularity = Granularity(settings.output, settings.top_k, settings.round_decimals)
    return Blackbox(
        model, card.input_size, steps, granularity, device, amp=settings.amp, trace=settings.trace
    )


def model_threads(settings: VictimSettings, device: torch.device) -> int:
    """How many forward passes run at once; on a CPU each gets its share of the cores.

    Several single-threaded forward passes keep a small CPU busy where one pass with several
    intra-op threads stalls each time the event loop takes a core (benchmarks/serve.py).
    """
    if device.type != "cpu":
        return settings.model_threads or 1
    cores = usable_cpus()
    threads = settings.model_threads or cores
    torch.set_num_threads(max(1, cores // threads))
    return threads


def _run_batch(blackbox: Blackbox, metrics: ServiceMetrics):
    def run(images: np.ndarray, clients: list[str]) -> list[tuple[dict, bool]]:
        metrics.batch_images.observe(len(images))
        batch = blackbox.answer(images, clients)
        for name, mask in batch.flags.items():
            if (flagged := int(mask.sum())) > 0:
                metrics.flagged.labels(defense=name).inc(flagged)
        predictions = blackbox.granularity.wire(batch)
        return list(zip(predictions, batch.mask("rejected").tolist(), strict=True))

    return run


async def authenticate(request: Request) -> str:
    """The client's accounting id, fixed by `ApiKeyMiddleware` after it checked the key.
    (Async so that FastAPI runs it on the event loop, not in a thread-pool hop per request.)"""
    return request.state.client


Client = Annotated[str, Depends(authenticate)]


def load_service(**overrides: Any) -> tuple[VictimSettings, Blackbox]:
    """The settings (`VICTIM_*`, `overrides` winning) and the loaded model, before the server
    binds its port: a bad value or a refused checkpoint is one `TestbedError` line."""
    settings = read_settings(**overrides)
    log_like_uvicorn()  # before loading: a defense may warn
    return settings, load_blackbox(settings)


def _from_environment() -> tuple[VictimSettings, Blackbox]:
    """For `uvicorn victim_service.app:create_app --factory`: a bad `VICTIM_*` value or a
    refused checkpoint prints one line and exits 2, as `victim-service serve` does (uvicorn
    would print a traceback)."""
    try:
        return load_service()
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def create_app(settings: VictimSettings | None = None, blackbox: Blackbox | None = None) -> FastAPI:
    """The app; `blackbox` when the caller loaded it already (the CLI does, to fail cleanly).
    Without `settings` (uvicorn's `--factory`), from the environment alone."""
    if settings is None:
        settings, blackbox = _from_environment()
    tune_malloc()  # before the decoding and model threads start (see memory.py)
    log_like_uvicorn()  # a defense's warning at load, in the server's format
    metrics = ServiceMetrics(settings.metrics_max_clients)
    limiter = (
        RateLimiter(
            settings.rate_limit,
            settings.rate_burst or settings.max_images,
            settings.rate_max_clients,
        )
        if settings.rate_limit
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = blackbox or await asyncio.to_thread(load_blackbox, settings)
        batcher = MicroBatcher(
            _run_batch(loaded, metrics),
            settings.batch_max_size,
            settings.batch_max_wait_ms,
            workers=model_threads(settings, loaded.device),
        )
        await batcher.start()
        app.state.blackbox, app.state.batcher = loaded, batcher
        app.state.ready = True
        yield
        app.state.ready = False
        await batcher.stop()

    app = FastAPI(
        title="Victim prediction API",
        version="1",
        description="An image classifier behind a prediction API, with configurable output "
        "granularity and defenses against model extraction.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics, app.state.ready = settings, metrics, False
    app.state.limiter = limiter
    if limiter is not None:
        metrics.track_clients(
            "victim_rate_limit_clients",
            "Clients with a rate-limit bucket (bounded)",
            limiter.__len__,
        )
    count_error = lambda kind: metrics.errors.labels(kind=kind).inc()  # noqa: E731
    install_error_handlers(app, count_error)
    app.add_middleware(
        BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes, on_refuse=count_error
    )
    # added last, so outermost: a request without a valid key is refused before anything else
    app.add_middleware(ApiKeyMiddleware, api_keys=settings.api_keys, on_refuse=count_error)
    if settings.api_keys:
        _document_security(app)

    @app.post(
        "/v1/predict",
        response_class=Response,
        response_model=PredictResponse,
        responses={code: {"model": ErrorBody} for code in (400, 401, 403, 413, 415, 422, 429, 503)},
        openapi_extra={"requestBody": predict_request_body(settings)},
        summary="Classify one or many images",
    )
    async def predict(request: Request, client: Client) -> Response:
        """Images as multipart `images` files or JSON base64; one prediction each, in order."""

        async def read() -> tuple[int, Callable[[], np.ndarray]]:
            payloads = await read_payloads(request, settings)
            input_size = request.app.state.blackbox.input_size
            return len(payloads), partial(decode_all, payloads, settings.max_pixels, input_size)

        predictions = await answer(request, client, read)
        return json_response({"output": settings.output, "predictions": predictions})

    async def answer(request: Request, client: str, read: ReadImages) -> list[dict]:
        """The one way from a request to its answers, for /v1 and /v2 alike.

        `read()` parses the request into (image count, images or a function that decodes them);
        then the client's rate limit, decoding (on a model thread on a CPU, in a pool thread
        beside an accelerator), the micro-batched model and its defenses. Refusals raise
        `ApiError` (403 when a defense refuses an image); requests, images, clients and latency
        are counted in /metrics.
        """
        start = time.perf_counter()
        with metrics.in_flight.track_inprogress():
            return await _answer(request, client, read, start)

    async def _answer(request: Request, client: str, read: ReadImages, start: float) -> list[dict]:
        try:
            count, images = await read()
            if limiter is not None:
                limiter.take(client, count)
            if callable(images) and request.app.state.blackbox.device.type != "cpu":
                # an accelerator runs the model: the CPU decodes meanwhile, off the model thread
                images = await asyncio.to_thread(images)
            try:  # on a CPU, the model thread that takes the job decodes it (no thread hop)
                rows = await request.app.state.batcher.submit(images, client, count)
            except ServiceStopping as exc:
                raise ApiError(503, "not_ready", "the service is shutting down") from exc
        except ApiError as exc:
            metrics.requests.labels(status=str(exc.status)).inc()
            raise
        rejected = [i for i, (_, refused) in enumerate(rows) if refused]
        metrics.count_client(client, len(rows))
        if rejected:
            metrics.requests.labels(status="403").inc()
            raise ApiError(
                403, "query_refused", "the query was refused by the service's defenses", rejected[0]
            )
        metrics.requests.labels(status="200").inc()
        metrics.images.inc(len(rows))
        metrics.latency.observe(time.perf_counter() - start)
        return [p for p, _ in rows]

    app.include_router(v2_router(settings, Client, answer))

    @app.get("/v1/model", response_model=ModelInfo, summary="What the API discloses")
    async def model_info(request: Request, _: Client) -> ModelInfo:
        blackbox: Blackbox = request.app.state.blackbox
        return ModelInfo(
            num_outputs=blackbox.model.num_classes,
            input_size=blackbox.input_size,
            output=settings.output,
            top_k=settings.top_k if settings.output == "topk" else None,
            round_decimals=settings.round_decimals,
            max_images_per_request=settings.max_images,
            max_body_bytes=settings.max_body_bytes,
        )

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Model loaded", responses={503: {"model": ErrorBody}})
    async def readyz(request: Request) -> dict:
        if not request.app.state.ready:
            raise ApiError(503, "not_ready", "the model is not loaded yet")
        return {"status": "ready"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus(_: Client) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def predict_request_body(settings: VictimSettings) -> dict:
    """What /v1/predict accepts, with its limits: 1 to `max_images` non-empty image files.

    A schema cannot say that the bytes decode to an image: such a body gets 400 (not an image)
    or 413 (over the pixel or body limit), both documented.
    """
    count = {"minItems": 1, "maxItems": settings.max_images}
    image_types = "image/png, image/jpeg, image/*, application/octet-stream"
    base64_chars = (settings.max_body_bytes + 2) // 3 * 4
    return {
        "required": True,
        "description": f"At most {settings.max_body_bytes} bytes in all; images of at most "
        f"{settings.max_pixels} pixels each.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary", "minLength": 1},
                            **count,
                        }
                    },
                    "required": ["images"],
                },
                "encoding": {"images": {"contentType": image_types}},
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "description": "base64-encoded image files (PNG, JPEG, ...)",
                            "items": {
                                "type": "string",
                                "contentEncoding": "base64",
                                "pattern": BASE64_PATTERN,
                                "minLength": 4,
                                "maxLength": base64_chars,
                            },
                            **count,
                        }
                    },
                    "required": ["images"],
                }
            },
        },
    }


def _document_security(app: FastAPI) -> None:
    """Say in the OpenAPI document what the middleware enforces: a key on every non-public path."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            }
            for path, operations in schema["paths"].items():
                if path in PUBLIC_PATHS:
                    continue
                # both shapes are in the document already (/v1 and /v2 routes name them)
                shape = (ProtocolErrorBody if path.startswith(V2_PREFIX) else ErrorBody).__name__
                unauthorized = {
                    "description": "Missing or invalid API key",
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}
                    },
                }
                for operation in operations.values():
                    operation["security"] = [{"ApiKeyHeader": []}, {"Bearer": []}]
                    operation.setdefault("responses", {}).setdefault("401", unauthorized)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def read_payloads(request: Request, settings: VictimSettings) -> list[bytes]:
    """The raw image files of a request, multipart or JSON; refusals name the image's position."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            payloads = await _read_multipart(request, settings)
        elif content_type == "application/json":
            payloads = await _read_json(request)
        else:
            payloads = None
    except ClientDisconnect:  # gone mid-upload: nobody to answer, nothing to log as a crash
        raise ApiError(
            400, "client_disconnected", "the client left before sending its body"
        ) from None
    if payloads is None:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {content_type or '(none)'!r} is not accepted; "
            "send multipart/form-data with 'images' files or application/json",
        )
    if not payloads:
        raise ApiError(422, "no_images", "the request holds no images")
    if len(payloads) > settings.max_images:
        raise ApiError(
            413,
            "too_many_images",
            f"{len(payloads)} images in one request; the limit is {settings.max_images}",
        )
    return payloads


async def _read_multipart(request: Request, settings: VictimSettings) -> list[bytes]:
    boundary = boundary_of(request.headers.get("content-type", ""))
    if boundary is not None:  # the fast path for well-formed bodies (victim_service.multipart)
        parts = split_images(await request.body(), boundary, settings.max_images)
        if parts is not None:
            return [_checked_part(declared, data, i) for i, (declared, data) in enumerate(parts)]
    limit = settings.max_images * 4 + 16
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except StarletteHTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise ApiError(
                413, "too_many_images", f"over the limit of {settings.max_images} images"
            ) from None
        raise ApiError(
            400, "malformed_multipart", f"malformed multipart body: {exc.detail}"
        ) from None
    payloads = []
    for position, part in enumerate(form.getlist("images")):
        if isinstance(part, str):
            raise ApiError(422, "not_a_file", "each 'images' part must be a file", position)
        payloads.append(_checked_part(part.content_type, await part.read(), position))
    await form.close()
    return payloads


def _checked_part(declared: str | None, data: bytes, position: int) -> bytes:
    declared = (declared or "application/octet-stream").lower()
    if not declared.startswith(IMAGE_CONTENT_TYPES):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"part declared as {declared!r}, not an image",
            position,
        )
    return data


async def _read_json(request: Request) -> list[bytes]:
    try:
        document = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, "malformed_json", f"the body is not valid JSON: {exc}") from None
    try:
        body = PredictJSONRequest.model_validate(document)
    except ValidationError as exc:
        raise ApiError(
            422,
            "invalid_request",
            "expected {'images': [<base64 string>, ...]}: "
            + "; ".join(e["msg"] for e in exc.errors()[:3]),
        ) from None
    payloads = []
    for position, text in enumerate(body.images):
        try:
            payloads.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(
                422, "invalid_base64", "the image is not valid base64", position
            ) from None
    return payloads


def decode_all(payloads: list[bytes], max_pixels: int, input_size: int) -> np.ndarray:
    out = np.empty((len(payloads), input_size, input_size, 3), dtype=np.uint8)
    for position, data in enumerate(payloads):
        try:
            out[position] = resize(decode_image(data, max_pixels), input_size)
        except ImageTooLargeError as exc:
            raise ApiError(413, exc.kind, str(exc), position) from None
        except ImageError as exc:
            raise ApiError(400, exc.kind, str(exc), position) from None
    return out
