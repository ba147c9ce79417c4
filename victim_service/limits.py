"""Request-size limit (pure ASGI, refuses before reading the body) and per-client rate limits."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from victim_service.errors import ApiError, send_error


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
            await send_error(send, BodyTooLargeError(self.limit), scope["path"])
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


class RateLimiter:
    """A token bucket per client, counted in images: `rate` per second, `burst` at most.

    Bounded in the number of clients (a flood of addresses or keys is a cheap memory attack):
    buckets live in last-use order; one idle long enough to have refilled is forgotten for free
    (a new client starts full anyway), and past `max_clients` the least recently used is evicted
    (`evicted` counts those: that client then starts again with a full bucket).
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self.refill_s = burst / rate
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, cost: int) -> None:
        """Spend `cost` tokens or raise 429 with the seconds until they are there."""
        now = time.monotonic()
        with self._lock:
            while self._buckets and now - next(iter(self._buckets.values()))[1] >= self.refill_s:
                self._buckets.popitem(last=False)
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            spent = tokens >= cost
            self._buckets[client] = (tokens - cost if spent else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
                self.evicted += 1
        if not spent:
            wait_s = (cost - tokens) / self.rate
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {self.rate:g} images/s exceeded; retry in {wait_s:.3f} s",
                headers=retry_after(wait_s),
            )


def retry_after(wait_s: float) -> dict[str, str]:
    """`Retry-After` in whole seconds (HTTP allows no less), rounded up, and `Retry-After-Ms`
    (as OpenAI's and Azure's APIs send it) for clients that can wait less: with a small bucket
    the rounding alone would hold a client to one bucketful per second."""
    return {"Retry-After": str(math.ceil(wait_s)), "Retry-After-Ms": str(math.ceil(wait_s * 1000))}
