"""One error shape for every refusal: `{"error": {"kind", "message", "position"}}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


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


def error_response(
    status: int, kind: str, message: str, position: int | None = None, headers=None
) -> JSONResponse:
    body = {"error": {"kind": kind, "message": message, "position": position}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, on_error) -> None:
    """Register handlers; `on_error(kind)` counts each refusal for /metrics."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        on_error(exc.kind)
        return error_response(exc.status, exc.kind, exc.message, exc.position, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        on_error(kind)
        return error_response(exc.status_code, kind, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        on_error("invalid_request")
        return error_response(422, "invalid_request", str(exc.errors()))
