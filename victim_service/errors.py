"""One error shape for every refusal: `{"error": {"kind", "message", "position"}}`.

Under `/v2/` (the Open Inference Protocol) the protocol's own shape is used instead, so that
Triton's, KServe's and MLServer's clients read the message: `{"error": "<message>", "kind",
"position"}` (the same facts, the message where those clients look for it).
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        position: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.position, self.headers = position, headers


V2_PREFIX = "/v2"


def error_response(
    status: int,
    kind: str,
    message: str,
    position: int | None = None,
    headers=None,
    path: str = "",
) -> JSONResponse:
    body = error_body(kind, message, position, path)
    return JSONResponse(body, status_code=status, headers=headers)


def error_body(kind: str, message: str, position: int | None, path: str) -> dict:
    """The one shape, or the Open Inference Protocol's under /v2."""
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return {"error": message, "kind": kind, "position": position}
    return {"error": {"kind": kind, "message": message, "position": position}}


async def send_error(send: Send, error: ApiError, path: str = "") -> None:
    """The error body from a pure ASGI middleware, before the body was read (so: close)."""
    body = json.dumps(error_body(error.kind, error.message, error.position, path)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install_error_handlers(app: FastAPI, on_error) -> None:
    """Register handlers; `on_error(kind)` counts each refusal for /metrics."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        on_error(exc.kind)
        return error_response(
            exc.status, exc.kind, exc.message, exc.position, exc.headers, request.url.path
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        on_error(kind)
        return error_response(
            exc.status_code, kind, str(exc.detail), headers=exc.headers, path=request.url.path
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        on_error("invalid_request")
        return error_response(422, "invalid_request", str(exc.errors()), path=request.url.path)
