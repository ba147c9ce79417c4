"""`query-distribution --quick`: four query sources, with and without the OOD filter."""

from __future__ import annotations

import json

import pytest

from scenarios.experiments import query_distribution as qd


@pytest.mark.timeout(1800)
def test_query_distribution_quick(quick_experiments, tmp_path):
    out = tmp_path / "results" / "query-distribution"
    results = qd.run(out, quick=True, say=print)

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    rows = {(r["source"], r["filter"]): r for r in saved["rows"]}
    assert list(rows) == [(s, f) for s in qd.SOURCES for f in (False, True)]
    for r in rows.values():
        assert 0.0 <= r["flagged"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0
        assert 0.0 <= r["recovery"] <= 1.2 and r["queries"] == qd.QUICK.budget
    assert saved["victim_accuracy"] > 0.9
    # natural images teach the knockoff more than noise does (Atli et al.)
    natural, noise = rows[("natural", False)], rows[("noise", False)]
    assert natural["agreement"] > noise["agreement"], rows
    # the filter flags natural out-of-distribution images, not in-distribution ones
    inside = rows[("in-distribution", True)]
    assert inside["flagged"] < rows[("natural", True)]["flagged"], rows
    assert inside["flagged"] < 0.25, inside
    # the same pool images with and without the filter: the filter's verdicts agree
    for source in ("natural", "noise", "in-distribution"):
        assert rows[(source, False)]["flagged"] == rows[(source, True)]["flagged"]
    assert "in-distribution" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
