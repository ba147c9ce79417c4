"""Request-size limit (pure ASGI, refuses before reading the body) and per-client rate limits."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from victim_service.errors import ApiError


class BodyTooLargeError(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"request body over the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """413 from Content-Length alone when it is over the limit; else count bytes as they arrive."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, on_refuse=lambda kind: None) -> None:
        self.app, self.limit, self.on_refuse = app, max_body_bytes, on_refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.on_refuse("body_too_large")
            await _send_json(send, 413, BodyTooLargeError(self.limit))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError(self.limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, error: ApiError) -> None:
    body = json.dumps(
        {"error": {"kind": error.kind, "message": error.message, "position": None}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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


class RateLimiter:
    """A token bucket per client, counted in images: `rate` per second, `burst` at most."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str, cost: int) -> None:
        """Spend `cost` tokens or raise 429 with the seconds until they are there."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < cost:
                self._buckets[client] = (tokens, now)
                wait = math.ceil((cost - tokens) / self.rate)
                raise ApiError(
                    429,
                    "rate_limited",
                    f"rate limit of {self.rate:g} images/s exceeded; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            self._buckets[client] = (tokens - cost, now)
