"""Services forked from the preloaded server (what the experiments start for each row): the same
API as a fresh process, the caller's environment of the moment, fast failures, no orphans."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.errors import TestbedError
from tests.servers import ROOT
from victim_service.launch import preloaded_service


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _predict(url: str) -> dict:
    files = [("images", ("a.png", _png(), "image/png"))]
    response = httpx.post(f"{url}/v1/predict", files=files, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def test_forked_services_take_the_callers_environment_as_it_is_now(
    victim_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
):
    with preloaded_service({"VICTIM_CHECKPOINT": str(victim_checkpoint)}) as url:
        probs = _predict(url)
    assert probs["probabilities"] is not None and len(probs["probabilities"]) == 10
    # set after the server started (it forked the first service): the next child sees it
    monkeypatch.setenv("VICTIM_OUTPUT", "label")
    with preloaded_service({"VICTIM_CHECKPOINT": str(victim_checkpoint)}) as url:
        label = _predict(url)
    assert "probabilities" not in label and label["label"] == int(np.argmax(probs["probabilities"]))
    with pytest.raises(httpx.ConnectError):  # stopped on leaving the block
        httpx.get(f"{url}/readyz", timeout=5)


def test_a_service_that_cannot_start_fails_at_once_with_its_exit_code(tmp_path: Path):
    start = time.monotonic()
    with (
        pytest.raises(TestbedError, match="exited with code 2"),
        preloaded_service({"VICTIM_CHECKPOINT": str(tmp_path / "missing.pt")}, ready_timeout=300),
    ):
        pass
    assert time.monotonic() - start < 60  # not the ready timeout


def test_killing_the_caller_stops_its_services(victim_checkpoint: Path):
    """An experiment killed mid-run leaves no service behind: the server reads EOF on its
    stdin and stops its children."""
    script = (
        "import sys\n"
        "from victim_service.launch import preloaded_service\n"
        "with preloaded_service({'VICTIM_CHECKPOINT': sys.argv[1]}) as url:\n"
        "    print(url, flush=True)\n"
        "    sys.stdin.read()\n"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", script, str(victim_checkpoint)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert caller.stdout is not None
        url = caller.stdout.readline().strip()
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait(10)
    assert _gone(url, 30), f"the service at {url} outlived its caller by 30 s"


def _gone(url: str, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/readyz", timeout=1)
        except httpx.ConnectError:
            return True
        except httpx.TransportError:  # a connection cut while the service shuts down
            pass
        time.sleep(0.1)
    return False


def test_a_killed_server_takes_its_services_along_and_the_next_call_starts_another(
    victim_checkpoint: Path,
):
    from victim_service import launch

    env = {"VICTIM_CHECKPOINT": str(victim_checkpoint)}
    with preloaded_service(env) as url:
        server = launch._ZYGOTE._server
        assert server is not None
        server.send_signal(signal.SIGKILL)  # as the OOM killer would
        server.wait(10)
        assert _gone(url, 30), f"the service at {url} outlived its server"
        with pytest.raises(TestbedError, match="fork server died"):  # not a wait for /readyz
            launch._ZYGOTE.exit_code(12345)
    with preloaded_service(env) as url:  # a new server
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        assert launch._ZYGOTE._server is not server


def test_where_cuda_is_visible_each_service_is_a_fresh_process(
    victim_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
):
    """Simulated (no GPU here): the fork server is never asked."""
    from victim_service import launch

    class NoForks:
        def start(self, *args: object, **kwargs: object) -> int:
            raise AssertionError("forked beside an accelerator")

    monkeypatch.setattr(launch, "_accelerator_visible", lambda: True)
    monkeypatch.setattr(launch, "_ZYGOTE", NoForks())
    with preloaded_service({"VICTIM_CHECKPOINT": str(victim_checkpoint)}) as url:
        assert len(_predict(url)["probabilities"]) == 10
