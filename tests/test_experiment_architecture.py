"""`architecture --quick` end to end: knockoffs of several architectures on one transfer set."""

from __future__ import annotations

import json

import pytest

from scenarios.experiments import architecture


def test_the_default_scale_compares_same_smaller_and_larger_knockoffs():
    config = architecture.FULL
    victim = architecture.parameters(config.victim.arch, 10)
    sizes = {arch: architecture.parameters(arch, 10) for arch in config.archs}
    assert config.victim.arch in sizes
    assert min(sizes.values()) < victim < max(sizes.values()), sizes


@pytest.mark.timeout(1800)
def test_architecture_quick_through_the_real_service(quick_experiments, tmp_path):
    out = tmp_path / "architecture"
    architecture.run(out, quick=True, say=lambda _: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "architecture" and saved["quick"]
    rows = {r["setting"]: r for r in saved["rows"]}
    assert list(rows) == list(architecture.QUICK.archs)
    assert [r["same_as_victim"] for r in rows.values()] == [
        arch == saved["victim_arch"] for arch in rows
    ]
    assert sum(r["same_as_victim"] for r in rows.values()) == 1
    assert max(r["parameters"] for r in rows.values()) > saved["victim_parameters"]
    assert len({r["queries"] for r in rows.values()}) == 1  # one transfer set for all
    for row in rows.values():
        assert 0.0 <= row["recovery"] <= 1.2 and 0.0 <= row["agreement"] <= 1.0
    # 600 answers and 6 epochs: the victim's own architecture learns (0.37 seen); the larger
    # ones may stay near a constant guess (cnn9 gave 0.23 once, 0.12 another time)
    (same,) = [r for r in rows.values() if r["same_as_victim"]]
    assert same["agreement"] > 0.2, rows
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
