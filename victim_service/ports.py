"""Loopback ports for the services this project starts: held from the moment they are chosen.

Choosing a free port, closing it and letting the service bind it later leaves a window in
which another process (a second experiment, a parallel test) can take the same port; the
launcher's readiness poll would then reach that other service and report it as its own. The
launchers bind and listen first, then hand the socket to the service (uvicorn's `fd`, or its
`sockets`), so the address a launcher polls is always its own service's.
"""

from __future__ import annotations

import socket

from shared.errors import TestbedError

BACKLOG = 2048
"""uvicorn's own default: connections made before the service accepts wait in this queue."""


def listening_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:`port` (0: any free port) and listening; a clear error
    when the port is taken. SO_REUSEADDR, as uvicorn sets it: a service restarted on its port
    is not refused for the connections its predecessor left in TIME_WAIT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise TestbedError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    return sock


def free_port() -> int:
    """A port nothing listens on at the moment of the call (released at once): for an address
    that must refuse connections, never for a service to bind later (`listening_socket`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
