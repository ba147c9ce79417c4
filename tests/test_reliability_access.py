"""Access control and refused files, through the reliability harness's own check."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.common import throwaway_victim
from reliability.access import app_routes, check_access
from shared.checkpoint import load_checkpoint
from shared.errors import TestbedError
from victim_service.settings import VictimSettings


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return throwaway_victim(tmp_path_factory.mktemp("victim") / "v.pt", arch="cnn5")


def test_routes_are_read_from_the_app_docs_and_metrics_included(victim):
    routes = app_routes(VictimSettings(checkpoint=victim))
    assert {("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json"),
            ("POST", "/v1/predict"), ("GET", "/healthz")} <= set(routes)  # fmt: skip


def test_keys_guard_every_route_never_leak_and_bursts_hold(victim, tmp_path):
    result = check_access(victim, tmp_path, connections=32)
    assert result.ok, result.failures
    assert result.figures["keys_leaked"] == 0 and result.figures["bad_files_refused"] == 6
    assert result.figures["burst_ok"] >= 8 and result.figures["burst_429"] >= 16


def test_pickled_code_checkpoint_is_refused_in_one_line(tmp_path):
    import os

    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 1, "card": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(TestbedError, match="refused to load checkpoint .*pickled code") as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert "\n" not in str(info.value) and not marker.exists()
