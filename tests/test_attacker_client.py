"""The attacker's client against the real service on loopback: answers, refusals, retries."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from attacker.client import FatalAPIError, PredictClient, RetryPolicy, _error_text, _retry_after
from attacker.query import QueryConfig, run_query
from attacker.store import iter_queries, open_store
from benchmarks.common import throwaway_victim
from shared.datasets import load_dataset
from shared.imaging import encode_image
from tests.servers import free_port, running_service
from victim_service.app import create_app
from victim_service.settings import VictimSettings

FAST_RETRY = RetryPolicy(max_retries=12, base_delay_s=0.02, max_delay_s=0.2)


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 32x32 cnn5: the client's behaviour does not depend on accuracy."""
    return throwaway_victim(tmp_path_factory.mktemp("victim") / "v.pt", arch="cnn5")


@pytest.fixture(scope="module")
def service(victim: Path):
    settings = VictimSettings(checkpoint=victim, device="cpu", api_keys=["k1"], max_images=16)
    with running_service(settings) as url:
        yield url


def _payloads(n: int) -> list[bytes]:
    pool = load_dataset("noise", size=n, image_size=32, seed=0)
    return [encode_image(pool.image(i)) for i in range(n)]


async def _call(url: str, api_key: str | None, images: list[bytes], **kwargs):
    async with PredictClient(url, api_key=api_key, **kwargs) as client:
        info = await client.model_info()
        return info, await client.predict(images), client.stats


def test_model_info_and_one_answer_per_image(service):
    info, predictions, stats = asyncio.run(_call(service, "k1", _payloads(5)))
    assert info.output == "probs" and info.num_outputs == 10 and info.max_images_per_request == 16
    assert len(predictions) == 5
    assert all(len(p["probabilities"]) == 10 for p in predictions)
    assert stats.requests == 2 and stats.retries == 0


@pytest.mark.parametrize(
    ("key", "status", "words"), [("wrong", 401, "API key"), (None, 401, "API key")]
)
def test_a_refused_key_stops_at_once(service, key, status, words):
    start = time.monotonic()
    with pytest.raises(FatalAPIError, match=words) as caught:
        asyncio.run(_call(service, key, _payloads(1)))
    assert caught.value.status == status
    # no retries on an answer that will not change: ten backed-off retries take over 20 s
    assert time.monotonic() - start < 10


def test_too_many_images_is_fatal_413(service):
    async def go():
        async with PredictClient(service, api_key="k1") as client:
            await client.predict(_payloads(17))

    with pytest.raises(FatalAPIError, match="batch-size") as caught:
        asyncio.run(go())
    assert caught.value.status == 413


def test_an_image_the_service_refuses_is_fatal_at_once(service):
    start = time.monotonic()
    with pytest.raises(FatalAPIError, match="rejected the request as malformed") as caught:
        asyncio.run(_call(service, "k1", [b"these bytes are no image"]))
    assert caught.value.status == 400 and caught.value.kind == "not_an_image"
    assert time.monotonic() - start < 10  # not retried: the same bytes get the same answer


def test_wrong_url_fails_fast_with_a_clear_message(service):
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(FatalAPIError, match="127.0.0.1") as caught:
        asyncio.run(_call(dead, "k1", _payloads(1)))
    assert "service running" in str(caught.value)
    assert time.monotonic() - start < 10  # two quick connect retries, not the full 20 s backoff
    with pytest.raises(FatalAPIError, match="no prediction API") as caught:
        asyncio.run(_call(service + "/not-here", "k1", _payloads(1)))
    assert caught.value.status == 404
    with pytest.raises(FatalAPIError, match="not an HTTP URL"):
        asyncio.run(_call("127.0.0.1:8000", "k1", _payloads(1)))


def test_a_plain_web_server_is_named_in_one_line(tmp_path):
    """Python's own http.server answers 404 with an HTML page, which the error once quoted in
    full (ten lines of markup); a multi-line text body is folded into one line."""
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):  # a text body over several lines
            self.send_response(500)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"Internal\n  Server\n\n Error")

    handler = functools.partial(Handler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(FatalAPIError) as caught:
            asyncio.run(_call(url, None, _payloads(1)))
        assert str(caught.value) == (
            f"no prediction API at {url} (HTTP 404: File not found, an HTML page); "
            "check --url, --protocol and --model"
        )
        response = httpx.post(url, content=b"")
        assert _error_text(response) == (None, "Internal Server Error")
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ failure injection


def flaky_app(app, rate: float, seed: int):
    """The real app, but a share of predict requests answer 503 before reaching it."""
    rng = random.Random(seed)
    refused = {"count": 0}

    async def wrapped(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/predict" and rng.random() < rate:
            refused["count"] += 1
            body = b'{"error": {"kind": "unavailable", "message": "flaky", "position": null}}'
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapped, refused


class DroppingProxy:
    """A TCP proxy on loopback that aborts a share of connections in the middle of a request."""

    def __init__(self, upstream: str, drop_rate: float, seed: int) -> None:
        self.host, self.port = upstream.removeprefix("http://").split(":")
        self.drop_rate, self.rng, self.dropped = drop_rate, random.Random(seed), 0
        self.loop = asyncio.new_event_loop()
        self.listen_port = 0

    async def _pipe(self, reader, writer, other, may_drop: bool) -> None:
        try:
            while data := await reader.read(65536):
                if may_drop and self.rng.random() < self.drop_rate:
                    self.dropped += 1
                    writer.transport.abort()
                    other.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, int(self.port))
        await asyncio.gather(
            self._pipe(client_reader, up_writer, client_writer, True),
            self._pipe(up_reader, client_writer, up_writer, False),
        )

    def __enter__(self) -> str:
        ready = threading.Event()

        async def serve():
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.listen_port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                with contextlib.suppress(asyncio.CancelledError):
                    await server.serve_forever()

        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(serve()), daemon=True
        )
        self.thread.start()
        ready.wait(5)
        return f"http://127.0.0.1:{self.listen_port}"

    def __exit__(self, *exc) -> None:
        for task in asyncio.all_tasks(self.loop):
            self.loop.call_soon_threadsafe(task.cancel)
        self.thread.join(5)


def test_503s_and_dropped_connections_are_retried_to_the_exact_budget(victim: Path, tmp_path: Path):
    settings = VictimSettings(checkpoint=victim, device="cpu")
    app, refused = flaky_app(create_app(settings), rate=0.25, seed=1)
    with running_service(settings, app=app) as url, DroppingProxy(url, 0.03, seed=2) as proxy:
        config = QueryConfig(
            url=proxy, pool="noise", budget=400, db=tmp_path / "t.sqlite", pool_size=1000,
            concurrency=4, batch_size=8, retry=FAST_RETRY, progress=False,
        )  # fmt: skip
        result = run_query(config)
    assert result.complete and result.answered == 400 and result.new == 400
    assert refused["count"] > 0 and result.stats.server_errors > 0
    assert result.stats.transport_errors > 0
    assert result.stats.retries >= result.stats.server_errors
    with open_store(config.db)() as session:
        rows = list(iter_queries(session, result.run_id))
    assert [r.position for r in rows] == list(range(400))
    assert len({r.pool_index for r in rows}) == 400


def test_429_retry_after_is_honoured(victim: Path, tmp_path: Path):
    rate = 150.0
    settings = VictimSettings(
        checkpoint=victim, device="cpu", rate_limit=rate, rate_burst=16, max_images=16
    )
    with running_service(settings) as url:
        start = time.monotonic()
        result = run_query(
            QueryConfig(
                url=url, pool="noise", budget=256, db=tmp_path / "r.sqlite", pool_size=512,
                concurrency=4, batch_size=8, retry=FAST_RETRY, progress=False,
            )
        )  # fmt: skip
        elapsed = time.monotonic() - start
    assert result.complete and result.answered == 256
    assert result.stats.rate_limited > 0
    assert result.stats.retries == 0  # 429s are waited out, not counted as failures
    # the bucket holds 16 images and refills at 150/s: at least (256 - 16) / 150 s
    assert elapsed >= (256 - 16) / rate
    assert result.stats.retry_after_waited_s > 0
    # Retry-After-Ms is waited to the millisecond: whole seconds (Retry-After) would hold the
    # client to one bucketful a second: 15 s for these 240 images (this test took 16 s then)
    assert elapsed < 8.0, elapsed


def test_retry_after_ms_is_preferred_and_whole_seconds_still_work():
    def wait(**headers: str) -> float:
        return _retry_after(httpx.Response(429, headers=headers))

    assert wait(**{"Retry-After": "1", "Retry-After-Ms": "120"}) == pytest.approx(0.12)
    assert wait(**{"Retry-After": "2"}) == 2.0  # a server without the millisecond header
    assert wait(**{"Retry-After": "3", "Retry-After-Ms": "soon"}) == 3.0
    assert wait(**{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 1.0
    assert wait() == 1.0


def test_httpcore_finds_sniffio_without_searching_the_path_each_request(service):
    """httpcore imports sniffio in every lock it creates, several per request: when it is not
    installed, each of those imports searches sys.path (about 3.8 ms of CPU per request)."""
    import httpcore._synchronization as sync

    sys.modules.pop("sniffio", None)

    async def one_request() -> str:
        async with PredictClient(service, api_key="k1", concurrency=2) as client:
            await client.model_info()
        return sync.current_async_library()

    assert asyncio.run(one_request()) == "asyncio"
    assert "sniffio" in sys.modules  # found once, then a dictionary lookup
