"""The launchers and their readiness wait: what every test, benchmark and experiment row goes
through."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from shared.errors import TestbedError
from victim_service import launch
from victim_service.launch import free_port, running_service, service_process, wait_ready
from victim_service.ports import listening_socket
from victim_service.settings import VictimSettings


def test_waiting_for_a_starting_service_leaves_the_cores_to_it():
    """Polling /readyz of a service that is not up yet takes little CPU: a client per poll
    (`httpx.get`) loaded the CA bundle every time, 0.5 s of CPU per second of waiting, taken
    from the service that was starting beside it."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: every poll is refused
    cpu = time.process_time()
    with pytest.raises(TestbedError, match="did not become ready in 2 s"):
        wait_ready(url, timeout=2)
    assert time.process_time() - cpu < 0.3


@pytest.fixture
def impostor() -> Iterator[int]:
    """Another HTTP server on a loopback port, answering 200 to every GET (a /readyz too)."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"not the victim")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_another_server_holds_is_refused_never_mistaken_for_the_service(impostor: int):
    """A launcher binds its service's port itself before the service starts: when the port is
    taken, it says so. Before, the service failed to bind while the readiness poll reached the
    other server's 200 and reported it ready, and everything after queried a stranger; that is
    also what befell a launcher whose freshly chosen port another process took first."""
    url = f"http://127.0.0.1:{impostor}"
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200  # it would pass for ready
    taken = f"cannot listen on 127.0.0.1:{impostor}: Address already in use"
    with pytest.raises(TestbedError, match=taken), service_process({}, port=impostor):
        pass
    with pytest.raises(TestbedError, match=taken):
        launch._ZYGOTE.start(dict(os.environ), port=impostor)


def test_each_launcher_serves_on_the_port_it_chose_and_releases_it(victim_checkpoint: Path):
    env = {"VICTIM_CHECKPOINT": str(victim_checkpoint), "VICTIM_DEVICE": "cpu"}
    launchers = {
        "thread": lambda: running_service(VictimSettings(checkpoint=victim_checkpoint)),
        "process": lambda: _url_of(service_process(env)),
        "fork": lambda: launch.preloaded_service(env),
    }
    for name, launcher in launchers.items():
        with launcher() as url:
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200, name
        port = int(url.rsplit(":", 1)[1])
        listening_socket(port).close()  # free again once the service stopped


@contextlib.contextmanager
def _url_of(launched: contextlib.AbstractContextManager) -> Iterator[str]:
    with launched as (url, _):
        yield url
