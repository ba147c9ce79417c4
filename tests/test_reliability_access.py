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


def test_route_walk_enters_the_included_v2_router(victim):
    """Regression: `app.routes` holds the /v2 router as one entry without a path; the walk
    missed all nine of its routes, so the access check never proved they need a key."""
    routes = set(app_routes(VictimSettings(checkpoint=victim)))
    assert {("GET", "/v2"), ("GET", "/v2/health/live"), ("POST", "/v2/models/x/infer"),
            ("GET", "/v2/models/x/versions/x/ready")} <= routes  # fmt: skip
    assert len([r for r in routes if r[1].startswith("/v2")]) == 9


def test_keys_guard_every_route_never_leak_and_bursts_hold(victim, tmp_path):
    result = check_access(victim, tmp_path, connections=32)
    assert result.ok, result.failures
    assert result.figures["keys_leaked"] == 0 and result.figures["bad_files_refused"] == 8
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


def test_tampered_but_well_formed_weights_are_refused_in_one_line(victim, tmp_path):
    """Regression: a checkpoint whose weights were changed in place (same keys and shapes)
    loaded silently; the sha256 recorded at save time now refuses it."""
    import torch

    payload = torch.load(victim, weights_only=True)
    next(iter(payload["state_dict"].values())).view(-1)[0] += 1e-3
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(TestbedError, match="does not match the sha256") as info:
        load_checkpoint(tmp_path / "tampered.pt")
    assert "\n" not in str(info.value)
    model, _ = load_checkpoint(victim)  # the untouched file still loads
    assert model.num_classes == 10


def test_checkpoints_written_before_sealing_still_load(victim, tmp_path):
    import torch

    payload = torch.load(victim, weights_only=True)
    del payload["sha256"]
    torch.save(payload, tmp_path / "legacy.pt")
    model, card = load_checkpoint(tmp_path / "legacy.pt")
    assert card.arch == "cnn5" and model.num_classes == 10
