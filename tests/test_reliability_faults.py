"""Faults and many clients at a small scale (`make reliability` runs them at full scale)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.common import throwaway_victim
from reliability.clients import check_many_clients
from reliability.common import service_process
from reliability.faults import check_graceful_shutdown, check_storage_faults


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return throwaway_victim(tmp_path_factory.mktemp("victim") / "v.pt", arch="cnn5")


def test_a_client_leaving_mid_upload_is_not_logged_as_a_crash(victim, tmp_path):
    log = tmp_path / "service.log"
    env = {"VICTIM_CHECKPOINT": str(victim), "VICTIM_DEVICE": "cpu"}
    with service_process(env, log_file=log) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            raw.sendall(head + b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        deadline = time.monotonic() + 30
        while "client_disconnected" not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline, "the disconnect was never counted"
            time.sleep(0.2)
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text


def test_disk_full_and_read_only_database_stop_cleanly_and_resume(victim, tmp_path):
    result = check_storage_faults(victim, tmp_path, budget=1500)
    assert result.ok, result.failures
    assert "cannot write the transfer set" in result.figures["disk_message"]


def test_sigterm_answers_every_request_in_flight(victim):
    result = check_graceful_shutdown(victim, in_flight=16)
    assert result.ok, result.failures
    assert result.figures["answered"] == 16


def test_thousands_of_addresses_keep_the_service_bounded(victim):
    # too few clients for a memory figure: the bounds themselves are what this test checks
    result = check_many_clients(
        victim, clients=3_000, max_buckets=500, max_labels=20, max_growth_mib=None
    )
    assert result.ok, result.failures
    assert result.figures["buckets"] == 500 and result.figures["metric_series"] == 21
