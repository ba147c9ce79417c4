"""Access control: with API keys configured, every route but health and readiness needs one.

A pure ASGI middleware, so it covers every route the app has or will have (the OpenAPI document
and /docs included) and refuses before a body is read. It also fixes each request's accounting
id (`scope["state"]["client"]`): a short hash of the key, never the key itself, else the peer's
address. Keys are never logged, counted or echoed.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from victim_service.errors import ApiError, send_error

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
"""Probes that orchestrators call without credentials."""


def client_id(api_key: str | None, address: str | None) -> str:
    """The accounting key: a short hash of the API key, else the client address."""
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]
    return f"addr:{address or 'unknown'}"


def check_api_key(given: str | None, allowed: list[str]) -> None:
    if not allowed:
        return
    if not given:
        raise ApiError(401, "missing_api_key", "an API key is required (header X-API-Key)")
    if not any(secrets.compare_digest(given.encode(), k.encode()) for k in allowed):
        raise ApiError(401, "invalid_api_key", "the API key is not valid")


def api_key_from_headers(headers: dict[bytes, bytes]) -> str | None:
    """`X-API-Key: K` or `Authorization: Bearer K`."""
    if (key := headers.get(b"x-api-key")) is not None:
        return key.decode("latin-1")
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


class ApiKeyMiddleware:
    """401 in the one error shape for a missing or wrong key on any non-public path."""

    def __init__(
        self, app: ASGIApp, api_keys: list[str], on_refuse: Callable[[str], None] = lambda k: None
    ) -> None:
        self.app, self.api_keys, self.on_refuse = app, api_keys, on_refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = api_key_from_headers(dict(scope["headers"])) if self.api_keys else None
        if self.api_keys and scope["path"] not in PUBLIC_PATHS:
            try:
                check_api_key(key, self.api_keys)
            except ApiError as exc:
                self.on_refuse(exc.kind)
                exc.headers = {"WWW-Authenticate": 'Bearer, ApiKey header="X-API-Key"'}
                await send_error(send, exc, scope["path"])
                return
        address = scope["client"][0] if scope.get("client") else None
        scope.setdefault("state", {})["client"] = client_id(key, address)
        await self.app(scope, receive, send)
