"""The service's own warnings print in uvicorn's format, in the log of a real service."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import throwaway_filter
from reliability.fuzz import stray_lines
from tests.servers import service_process


def test_a_defense_warning_at_load_prints_as_the_server_prints(
    victim_checkpoint: Path, tmp_path: Path
):
    """An OOD detector trained on other data (`none`) than the digits victim's: the warning
    at load is a `WARNING:` line like uvicorn's, not a bare line a library might have written."""
    log = tmp_path / "service.log"
    env = {"VICTIM_CHECKPOINT": str(victim_checkpoint), "VICTIM_DEVICE": "cpu",
           "VICTIM_OOD_DETECTOR": str(throwaway_filter(tmp_path / "ood.pt"))}  # fmt: skip
    with service_process(env, log_level="warning", log_file=log, ready_timeout=300):
        pass
    text = log.read_text()
    warnings = [line for line in text.splitlines() if "OOD detector" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING:"), text
    assert "was trained on none but the victim on digits" in warnings[0]
    assert not stray_lines(text), text
