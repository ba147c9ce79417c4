"""The benchmarks' load generator: its rate is the service's, and it ends and counts a request
the service never answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from benchmarks.loadgen import LoadResult, generate_load

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


def load_against(handle: Handler, **options: object) -> LoadResult:
    """`generate_load` with one-byte bodies against a loopback server answering by `handle`."""

    async def scenario() -> LoadResult:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await asyncio.wait_for(
                generate_load(
                    f"http://127.0.0.1:{port}",
                    requests=lambda i: ("/v1/predict", b"x", {}),
                    **options,  # type: ignore[arg-type]
                ),
                timeout=10,
            )

    return asyncio.run(scenario())


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")  # the head; a one-byte body follows
    await reader.readexactly(1)


def test_requests_never_answered_are_counted_and_the_run_ends():
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        try:
            while True:
                await read_request(reader)
                if answered == 3:  # the first three requests answered: silent until the
                    await reader.read()  # client hangs up (Python 3.12.1's server waits
                    return  # for every connection to close before it exits)
                answered += 1
                writer.write(OK)
                await writer.drain()
        except asyncio.IncompleteReadError:
            return  # the client closed between requests
        finally:
            writer.close()

    result = load_against(
        handle, concurrency=2, images_per_request=1, duration_s=5, warmup_s=0,
        answer_timeout_s=0.5,
    )  # fmt: skip
    assert result.unanswered == 2  # each worker's last request, then the worker stopped
    assert result.sent == 3 and result.requests == 3 and result.errors == 0


def test_the_rate_counts_every_answer_inside_the_window():
    """A server answering each request after 250 ms serves 4 requests/s per connection. With
    4 workers, a 0.1-s warm-up and a 1-s window, answers land at 0.25, 0.5, 0.75 and 1.0 s on
    each connection: 16 inside the window. Counting only requests that also started inside it
    gives 12 (the one in flight at the window's start is lost): a rate 25% short."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                await asyncio.sleep(0.25)
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    result = load_against(handle, concurrency=4, images_per_request=2, duration_s=1.0,
                          warmup_s=0.1)  # fmt: skip
    # 16 answers; 15 if the machine delays one connection's fourth answer by over 25 ms
    assert result.requests in (15, 16), result
    assert result.images_per_s == result.requests * 2 / 1.0
    assert result.errors == 0 and result.unanswered == 0
