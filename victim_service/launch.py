"""Start the real service with uvicorn on a free loopback port, in a thread or a subprocess.

Used by the demo, the benchmarks and the tests: one way to launch, wait for readiness and stop.
The experiments, which start a service for every row, fork theirs from a server that imported
the service once (`preloaded_service`, victim_service/zygote.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from shared.errors import TestbedError
from victim_service.app import create_app
from victim_service.ports import free_port, listening_socket
from victim_service.settings import VictimSettings
from victim_service.zygote import Zygote

__all__ = ["ROOT", "free_port", "preloaded_service", "running_service", "service_process",
           "wait_ready"]  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent


def wait_ready(
    url: str, timeout: float = 60.0, exit_code: Callable[[], int | None] | None = None
) -> None:
    """Poll /readyz until the model is loaded; fail early once `exit_code()` returns the code
    of a process that died (`Popen.poll`, or the fork server's answer).

    One client for every poll: `httpx.get` makes a client, and with it a TLS context that
    loads the CA bundle, each time (about 50 ms of CPU), which took 3.5 s of CPU from the
    cores a starting service needs, every start."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline:
            code = None if exit_code is None else exit_code()
            if code is not None:
                raise TestbedError(f"the victim service exited with code {code}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise TestbedError(f"the victim service at {url} did not become ready in {timeout:.0f} s")


@contextmanager
def running_service(settings: VictimSettings, app=None) -> Iterator[str]:
    """uvicorn in a background thread of this process, on a port it holds from the start
    (victim_service/ports.py); yields the base URL."""
    sock = listening_socket()
    config = uvicorn.Config(app or create_app(settings), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_ready(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def service_process(
    env: dict[str, str],
    port: int | None = None,
    log_level: str = "warning",
    ready_timeout: float = 60.0,
    log_file: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`uvicorn victim_service.app:create_app --factory` as a child process, configured by env;
    its stdout and stderr go to `log_file` when given. It serves on a socket this process bound
    on `port` (any free one by default) and hands over with `--fd`: the port is never free
    between its choice and the service's start (victim_service/ports.py).

    `ready_timeout`: seconds to wait for /readyz (importing torch and loading the model can
    take minutes on a machine whose cores are all busy)."""
    sock = listening_socket(port or 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "victim_service.app:create_app", "--factory",
           "--fd", str(sock.fileno()), "--log-level", log_level]  # fmt: skip
    log = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115
    with sock:  # the child holds its own copy
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=log, stderr=log, pass_fds=(sock.fileno(),)
        )
    try:
        wait_ready(url, timeout=ready_timeout, exit_code=process.poll)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if log is not None:
            log.close()


_ZYGOTE = Zygote()


def _accelerator_visible() -> bool:
    """Where CUDA is, services start as fresh processes: a driver that a parent touched before
    forking is unusable in the child, and a row on a GPU takes minutes beside which the
    seconds of a fresh interpreter do not count. (Not tested here: no GPU.)"""
    import torch

    return torch.cuda.is_available()


@contextmanager
def preloaded_service(
    env: dict[str, str], log_level: str = "warning", ready_timeout: float = 60.0
) -> Iterator[str]:
    """`service_process`, forked from a server that imported the service once: the same
    uvicorn and app factory with the caller's environment plus `env` (its log on the stderr
    the caller had when the server started), ready in a fraction of a second instead of the
    seconds importing torch takes; yields the base URL."""
    if not hasattr(os, "fork") or _accelerator_visible():  # a fresh process, as it starts one
        with service_process(env, log_level=log_level, ready_timeout=ready_timeout) as (url, _):
            yield url
        return
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    pid, port = _ZYGOTE.start(full_env, log_level=log_level)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=ready_timeout, exit_code=lambda: _ZYGOTE.exit_code(pid))
        yield url
    finally:
        _ZYGOTE.stop(pid)
