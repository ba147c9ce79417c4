"""A fork server for the service: one process imports the service (torch with it) once, then
forks a child per request that runs what `uvicorn victim_service.app:create_app --factory`
runs. The experiments start a service for every row of their tables; a fresh interpreter
spends seconds importing torch each time, a fork a few milliseconds. CPU hosts only: where
CUDA is visible, `launch.preloaded_service` starts fresh processes instead. Each child takes
the caller's environment of the moment (the VICTIM_* settings are read when the app is made);
what torch reads at import (OMP_NUM_THREADS, say) is the server's, from when it started.

The server never builds an app or runs a model, so it holds no threads, thread pool or
accelerator context when it forks. Requests and replies are JSON lines on its stdin and
stdout; when its stdin closes (the caller exited or was killed), it stops its children and
exits. Multiprocessing's forkserver is not used: its children re-run the caller's main
script, and what that imports varies with how the caller was started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from shared.errors import TestbedError
from victim_service.ports import listening_socket

STOP_TIMEOUT_S = 10.0
"""What a child gets to answer its requests in flight after SIGTERM, before SIGKILL."""


class _Children:
    """The server's children and the exit codes of those that ended."""

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.ended: dict[int, int] = {}

    def reap(self) -> None:
        for pid in list(self.running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.running.discard(pid)
                self.ended[pid] = os.waitstatus_to_exitcode(status)

    def code(self, pid: int) -> int | None:
        self.reap()
        return self.ended.get(pid)

    def stop(self, pid: int) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the exit code."""
        if pid not in self.running:
            return self.ended.get(pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.code(pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.code(pid) is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.running.discard(pid)
            self.ended[pid] = -signal.SIGKILL
        return self.ended[pid]


def _die_with_the_server() -> None:
    """Linux: SIGTERM this child when the server dies (killed by the OOM killer, say), which it
    would otherwise outlive, holding its port."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(env: dict[str, str], fd: int, log_level: str) -> None:
    """A forked child: the caller's environment as it is now (not as it was when the server
    started), stdin from /dev/null and stdout on the caller's stderr (never the server's
    protocol pipes), then uvicorn on the listening socket `fd` the server bound for it."""
    import uvicorn

    _die_with_the_server()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    os.environ.clear()
    os.environ.update(env)
    uvicorn.run("victim_service.app:create_app", factory=True, fd=fd, log_level=log_level)


def _run_child(args: dict, fd: int) -> int:
    """The child's exit code, as the interpreter would give it: it must never return into the
    server's loop, so it leaves by os._exit (after flushing what it wrote)."""
    code = 0
    try:
        _child(args["env"], fd, args["log_level"])
    except SystemExit as stop:  # uvicorn's exit on a failed startup (3), already logged
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(requests=sys.stdin, replies=sys.stdout) -> None:
    """The server's loop: {"start": {...}}, {"poll": pid} and {"stop": pid}, one reply each."""
    import victim_service.app  # noqa: F401  (what every child inherits ready-made)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's; EOF ends the server
    children = _Children()
    try:
        for line in requests:
            request = json.loads(line)
            if "start" in request:
                args = request["start"]
                try:  # bound here, before the fork: the port is the child's from the start
                    sock = listening_socket(args.get("port", 0))
                except TestbedError as exc:
                    reply: dict = {"error": str(exc)}
                else:
                    with sock:
                        pid = os.fork()
                        if pid == 0:
                            os._exit(_run_child(args, sock.fileno()))
                        reply = {"pid": pid, "port": sock.getsockname()[1]}
                    children.running.add(pid)
            elif "poll" in request:
                reply = {"exit": children.code(request["poll"])}
            else:
                reply = {"exit": children.stop(request["stop"])}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    finally:
        for pid in list(children.running):
            children.stop(pid)


class Zygote:
    """The caller's end: starts the server on first use; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: subprocess.Popen | None = None

    def _ask(self, request: dict) -> dict:
        """One request, one reply. Only a start starts a server: the services of one that died
        died with it (PR_SET_PDEATHSIG), so stopping one is done and polling one is an error."""
        with self._lock:
            if self._server is None or self._server.poll() is not None:
                if "stop" in request:
                    return {"exit": None}
                if "poll" in request:
                    raise TestbedError("the service's fork server died, and its services with it")
                self._server = subprocess.Popen(
                    [sys.executable, "-m", "victim_service.zygote"],
                    cwd=Path(__file__).resolve().parent.parent,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
            assert self._server.stdin is not None and self._server.stdout is not None
            try:
                self._server.stdin.write(json.dumps(request) + "\n")
                self._server.stdin.flush()
                line = self._server.stdout.readline()
            except OSError:  # it died as we wrote
                line = ""
        if not line:
            raise TestbedError("the service's fork server exited (its stderr says why)")
        return json.loads(line)

    def start(
        self, env: dict[str, str], port: int = 0, log_level: str = "warning"
    ) -> tuple[int, int]:
        """Fork a service with exactly `env` as its environment, on a socket the server binds
        on `port` (0: any free one) before forking; its pid and port."""
        reply = self._ask({"start": {"env": env, "port": port, "log_level": log_level}})
        if "error" in reply:
            raise TestbedError(reply["error"])
        return reply["pid"], reply["port"]

    def exit_code(self, pid: int) -> int | None:
        """None while the child runs."""
        return self._ask({"poll": pid})["exit"]

    def stop(self, pid: int) -> int | None:
        """SIGTERM (requests in flight are answered), SIGKILL after STOP_TIMEOUT_S."""
        return self._ask({"stop": pid})["exit"]


if __name__ == "__main__":
    serve()
