"""The attacker's HTTP client for any endpoint that speaks the victim service's API.

One `httpx.AsyncClient` with keep-alive and a bounded number of requests in flight. Transient
failures (connection errors, timeouts, 5xx, an unreadable body) are retried with exponential
backoff and jitter; 429 is honoured through its Retry-After, and every request waits it out, not
only the one that was refused. Answers that a retry cannot change (401, 403, 404, 413, 422, ...)
raise `FatalAPIError` at once. The client learns only what the API discloses: `/v1/model` and
the answers.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from attacker.inference_v2 import V2Model, infer_body, read_answers, read_metadata
from shared.errors import TestbedError
from shared.inference_protocol import HEADER_LENGTH, ProtocolError
from shared.schemas import ModelInfo

PROTOCOLS = ("v1", "v2")
"""v1: this testbed's /v1/predict; v2: the Open Inference Protocol (Triton, KServe, MLServer)."""

RETRYABLE_STATUS = frozenset({408, 500, 502, 503, 504})
"""Statuses a later attempt can turn into an answer."""


class FatalAPIError(TestbedError):
    """The API gave an answer that will not change on retry, or stayed unreachable."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; the delays of attempts 1, 2, ... grow as base * 2**n."""

    max_retries: int = 10
    """Retries of one request after connection errors, timeouts and 5xx (429 does not count)."""
    base_delay_s: float = 0.25
    max_delay_s: float = 8.0
    max_retry_after_s: float = 300.0
    """A 429 asking to wait longer than this is treated as a refusal."""
    connect_retries: int = 2
    """Retries of the first contact (`model_info`): a wrong URL should fail in about a second.
    Never more than `max_retries` (`--retries 0` retries nothing)."""

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.connect_retries < 0:
            raise TestbedError("retries must be >= 0")
        if not 0 < self.base_delay_s <= self.max_delay_s:
            raise TestbedError("need 0 < base_delay_s <= max_delay_s")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """'Equal jitter': half the exponential delay plus a uniform share of the other half."""
        delay = min(self.max_delay_s, self.base_delay_s * 2**retry)
        return delay / 2 + rng.uniform(0, delay / 2)


@dataclass
class ClientStats:
    """What happened on the wire; the tests and the benchmark read it."""

    requests: int = 0
    images: int = 0
    retries: int = 0
    rate_limited: int = 0
    transport_errors: int = 0
    server_errors: int = 0
    retry_after_waited_s: float = 0.0
    by_status: dict[int, int] = field(default_factory=dict)


class _Retry(Exception):
    """Internal: an attempt failed in a way worth retrying."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.wait_s = reason, wait_s


def _error_text(response: httpx.Response) -> tuple[str | None, str]:
    """(kind, message) from the service's `{"error": {...}}` body, or the raw text."""
    try:
        body = response.json()
        error = body["error"]
        if isinstance(error, str):  # the Open Inference Protocol's shape
            return (str(body["kind"]) if body.get("kind") else None), error
        return str(error.get("kind")), str(error.get("message"))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    if "html" in response.headers.get("content-type", ""):  # a web server, not an API
        return None, f"{response.reason_phrase}, an HTML page"
    text = " ".join(response.text.split())  # one line, whatever the body
    return None, (text[:200] + ("..." if len(text) > 200 else "")) or response.reason_phrase


def _fatal(response: httpx.Response, url: str) -> FatalAPIError:
    kind, message = _error_text(response)
    status = response.status_code
    detail = f"HTTP {status}" + (f" {kind}" if kind else "") + f": {message}"
    if status == 401:
        text = f"the API key was refused by {url} ({detail}); check --api-key"
    elif status == 403:
        text = f"the service refused the query ({detail}); stopping"
    elif status == 413:
        text = f"the request was too large for the service ({detail}); lower --batch-size"
    elif status in (404, 405):
        text = f"no prediction API at {url} ({detail}); check --url, --protocol and --model"
    elif status in (400, 415, 422):
        text = f"the service rejected the request as malformed ({detail})"
    else:
        text = f"unexpected answer from {url} ({detail})"
    return FatalAPIError(text, status, kind)


def _retry_after(response: httpx.Response) -> float:
    """Seconds to wait: `Retry-After-Ms` where the server sends it (OpenAI, Azure, ours), else
    `Retry-After` (whole seconds)."""
    try:
        return max(0.0, float(response.headers["retry-after-ms"]) / 1000)
    except (KeyError, ValueError):
        pass
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0  # an HTTP-date or garbage: wait a second and ask again


def multipart_body(images: list[bytes], boundary: str | None = None) -> tuple[bytes, str]:
    """One `multipart/form-data` body of `images` parts, built once.

    A single buffer goes out in one write and is reused as is by every retry, where httpx's
    streamed multipart costs several small socket writes per image.
    """
    boundary = boundary or secrets.token_hex(16)
    parts = []
    for i, data in enumerate(images):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        )
        parts.append(data)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class PredictClient:
    """`async with PredictClient(url) as api: info = await api.model_info(); ...`.

    Nothing happens in the constructor; the connection pool opens in `__aenter__`.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 16,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        seed: int = 0,
        protocol: str = "v1",
        model: str = "victim",
        binary: bool = True,
    ) -> None:
        if concurrency < 1:
            raise TestbedError("concurrency must be >= 1")
        if protocol not in PROTOCOLS:
            raise TestbedError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        self.protocol, self.model, self.binary = protocol, model, binary
        self.v2: V2Model | None = None
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.stats = ClientStats()
        self._rng = random.Random(seed)  # jitter only; never touches what is queried
        self._clients: list[httpx.AsyncClient] = []
        self._free: asyncio.Queue[httpx.AsyncClient] | None = None
        self._not_before = 0.0  # monotonic time before which nobody sends (after a 429)

    async def __aenter__(self) -> PredictClient:
        if not self.url.startswith(("http://", "https://")):
            raise FatalAPIError(f"not an HTTP URL: {self.url!r} (expected http://host:port)")
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        # one single-connection client per slot, handed out through a queue (which bounds the
        # requests in flight): httpx's shared pool scans every connection on every request,
        # about 1 ms of CPU per request at 16 connections, taken from the cores the service
        # shares on a small machine (benchmarks/attack.py)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        timeout = httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s))
        # one TLS context for all of them: each client would load the CA bundle (17 ms) itself
        tls = httpx.create_ssl_context()
        self._clients = [
            httpx.AsyncClient(
                base_url=self.url, headers=headers, limits=limits, timeout=timeout, verify=tls
            )
            for _ in range(self.concurrency)
        ]
        self._free = asyncio.Queue()
        for client in self._clients:
            self._free.put_nowait(client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        clients, self._clients, self._free = self._clients, [], None
        for client in clients:
            await client.aclose()

    async def model_info(self, batch_size: int = 8) -> ModelInfo:
        """Output mode, number of outputs, input size and request limits.

        v1: `GET /v1/model`. v2: the model's metadata (`GET /v2/models/{model}`), which also
        fixes how `infer_timed` asks; `batch_size` is the request limit where it says none.
        """
        first_contact = min(self.retry.connect_retries, self.retry.max_retries)
        if self.protocol == "v2":
            path = f"/v2/models/{self.model}"
            body, _ = await self._send("GET", path, max_retries=first_contact)
            if not isinstance(body, dict):
                raise FatalAPIError(f"{self.url}{path} did not answer with model metadata")
            self.v2 = read_metadata(self.model, body, batch_size)
            return self.v2.info
        body, _ = await self._send("GET", "/v1/model", max_retries=first_contact)
        try:
            return ModelInfo.model_validate(body)
        except ValueError as exc:
            raise FatalAPIError(
                f"{self.url}/v1/model did not answer like the victim service's API ({exc})"
            ) from None

    async def predict(self, images: list[bytes]) -> list[dict[str, Any]]:
        """One prediction dict per image, exactly as the API returned it."""
        predictions, _ = await self.predict_timed(images)
        return predictions

    async def predict_timed(self, images: list[bytes]) -> tuple[list[dict[str, Any]], float]:
        """Predictions and the latency in ms of the attempt that succeeded."""
        if not images:
            return [], 0.0
        content, content_type = multipart_body(images)
        body, latency_ms = await self._send(
            "POST", "/v1/predict", content=content, headers={"Content-Type": content_type}
        )
        try:
            predictions = body["predictions"]
        except (ValueError, KeyError, TypeError):
            raise FatalAPIError(f"{self.url}/v1/predict answered without predictions") from None
        if not isinstance(predictions, list) or len(predictions) != len(images):
            raise FatalAPIError(
                f"{self.url}/v1/predict answered {len(predictions)} predictions "
                f"for {len(images)} images"
            )
        self.stats.images += len(images)
        return predictions, latency_ms

    async def infer_timed(self, images: np.ndarray) -> tuple[list[dict[str, Any]], float]:
        """v2: answers for an (N, S, S, 3) uint8 batch, in the /v1 format, and the latency in ms.

        Tensors go through the binary extension (no image encoding on either side) unless the
        client was made with `binary=False` (JSON `data`, for servers without the extension).
        """
        if self.v2 is None:
            raise RuntimeError("call model_info() first: it reads the model's metadata")
        if not len(images):
            return [], 0.0
        model = self.v2
        content, headers = infer_body(model, images, self.binary)

        def parse(response: httpx.Response) -> list[dict[str, Any]]:
            return read_answers(
                model, response.content, response.headers.get(HEADER_LENGTH), len(images)
            )

        path = f"/v2/models/{model.name}/infer"
        try:
            answers, latency_ms = await self._send(
                "POST", path, content=content, headers=headers, parse=parse
            )
        except ProtocolError as exc:
            raise FatalAPIError(f"{self.url}{path} answered out of protocol: {exc}") from None
        self.stats.images += len(images)
        return answers, latency_ms

    async def _send(
        self,
        method: str,
        path: str,
        *,
        max_retries: int | None = None,
        parse: Callable[[httpx.Response], Any] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, float]:
        """The parsed JSON body of a 200 answer and its latency in ms, after any retries."""
        if self._free is None:
            raise RuntimeError("use `async with PredictClient(...)` before sending")
        max_retries = self.retry.max_retries if max_retries is None else max_retries
        retries = 0
        free = self._free
        while True:
            await self._wait_turn()
            client = await free.get()
            try:
                return await self._attempt(client, method, path, parse, **kwargs)
            except _Retry as caught:
                retry = caught
            finally:  # the connection is free again before any back-off
                free.put_nowait(client)
            if retry.wait_s is not None:  # 429: honour Retry-After, for every sender
                self._not_before = max(self._not_before, time.monotonic() + retry.wait_s)
                continue
            if retries >= max_retries:
                hint = (
                    " Is the service running and the URL right?"
                    if "connect" in (retry.reason.lower())
                    else ""
                )
                raise FatalAPIError(
                    f"{method} {self.url}{path} failed {_times(retries + 1)}, "
                    f"last: {retry.reason}.{hint}"
                ) from None
            self.stats.retries += 1
            await asyncio.sleep(self.retry.backoff(retries, self._rng))
            retries += 1

    async def _wait_turn(self) -> None:
        while (wait := self._not_before - time.monotonic()) > 0:
            self.stats.retry_after_waited_s += wait
            await asyncio.sleep(wait)

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        parse: Callable | None,
        **kwargs: Any,
    ) -> tuple[Any, float]:
        self.stats.requests += 1
        start = time.perf_counter()
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.UnsupportedProtocol as exc:
            raise FatalAPIError(f"cannot use URL {self.url!r}: {exc}") from None
        except httpx.TransportError as exc:  # connect/read/write errors, timeouts, drops
            self.stats.transport_errors += 1
            raise _Retry(f"{type(exc).__name__}: {exc or 'connection lost'}") from None
        latency_ms = (time.perf_counter() - start) * 1000
        status = response.status_code
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        if status == 200:
            if parse is not None:  # its ProtocolError is an answer a retry would not change
                return parse(response), latency_ms
            try:
                return json.loads(response.content), latency_ms
            except ValueError:
                self.stats.server_errors += 1
                raise _Retry("HTTP 200 with a body that is not JSON") from None
        if status == 429:
            self.stats.rate_limited += 1
            wait = _retry_after(response)
            if wait > self.retry.max_retry_after_s:
                raise FatalAPIError(
                    f"the service rate-limits this client for {wait:g} s "
                    f"(over the {self.retry.max_retry_after_s:g} s we wait)",
                    429,
                    "rate_limited",
                )
            raise _Retry("HTTP 429", wait_s=wait + self._rng.uniform(0, 0.05))
        if status in RETRYABLE_STATUS:
            self.stats.server_errors += 1
            kind, message = _error_text(response)
            raise _Retry(f"HTTP {status} {kind or ''} {message}".strip())
        raise _fatal(response, self.url)


def labels_via_api(
    url: str, images: Any, *, api_key: str | None = None, batch_size: int = 32
) -> list[int]:
    """The victim's top class for each (H, W, 3) image, read through its API like any client."""
    from shared.imaging import encode_image
    from shared.schemas import answer_label

    async def ask() -> list[int]:
        async with PredictClient(url, api_key=api_key) as client:
            info = await client.model_info()
            size = min(batch_size, info.max_images_per_request)
            batches = [
                [encode_image(im) for im in images[s : s + size]]
                for s in range(0, len(images), size)
            ]
            answers = await asyncio.gather(*(client.predict(b) for b in batches))
        return [answer_label(a, info.num_outputs) for batch in answers for a in batch]

    return asyncio.run(ask())
