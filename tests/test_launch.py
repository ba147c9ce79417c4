"""The launcher's readiness wait: what every test, benchmark and experiment row goes through."""

from __future__ import annotations

import time

import pytest

from shared.errors import TestbedError
from victim_service.launch import free_port, wait_ready


def test_waiting_for_a_starting_service_leaves_the_cores_to_it():
    """Polling /readyz of a service that is not up yet takes little CPU: a client per poll
    (`httpx.get`) loaded the CA bundle every time, 0.5 s of CPU per second of waiting, taken
    from the service that was starting beside it."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: every poll is refused
    cpu = time.process_time()
    with pytest.raises(TestbedError, match="did not become ready in 2 s"):
        wait_ready(url, timeout=2)
    assert time.process_time() - cpu < 0.3
