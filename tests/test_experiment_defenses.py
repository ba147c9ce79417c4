"""`defenses --quick`: every defense through the real service, PRADA against three attackers."""

from __future__ import annotations

import json

import pytest

from scenarios.experiments import defenses, probes, steps
from scenarios.experiments.registry import get


@pytest.mark.timeout(1800)
def test_defenses_quick_through_the_real_service(quick_experiments, tmp_path, monkeypatch):
    out = tmp_path / "results" / "defenses"
    lines: list[str] = []
    in_flight: list[int] = []
    real_target = defenses.Target

    def target(**kwargs):  # PRADA reads a client's queries in order: one request at a time
        in_flight.append(kwargs["concurrency"])
        return real_target(**kwargs)

    monkeypatch.setattr(defenses, "Target", target)
    results = defenses.run(out, quick=True, say=lines.append)
    assert in_flight and set(in_flight) == {1}, in_flight

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["experiment"] == "defenses" and saved["quick"]
    rows = {r["setting"]: r for r in saved["rows"]}
    assert list(rows) == [s.name for s in defenses.QUICK.settings]
    assert {r["defense"] for r in rows.values()} == {"none", *defenses.QUICK_STRENGTHS}
    for r in rows.values():
        assert 0.0 <= r["benign_accuracy"] <= 1.0 and 0.0 <= r["benign_refused"] <= 1.0
        assert 0.0 <= r["recovery"] <= 1.2 and 0.0 <= r["agreement"] <= 1.0
        assert 0 < r["answered"] <= r["queries"] == defenses.QUICK.budget
    none = rows["none"]
    assert none["benign_accuracy"] > 0.9 and none["agreement"] > 0.3, none
    # the perturbations keep every answer's top class: benign users lose nothing; rounding can
    # tie the top class with another (a tie reads as the lower index), so it may move a little
    for r in rows.values():
        if r["defense"] in ("reverse_sigmoid", "noise", "top-k", "label only"):
            assert r["benign_accuracy"] == none["benign_accuracy"], r
        if r["defense"] == "rounding":
            assert abs(r["benign_accuracy"] - none["benign_accuracy"]) <= 0.02, r
        if r["defense"] != "prada":
            assert r["answered"] == r["queries"] and r["refused_after"] is None
    assert rows["label only"]["agreement"] < none["agreement"], rows

    (prada,) = saved["prada_detection"]
    assert prada["threshold"] == defenses.QUICK_STRENGTHS["prada"][0]
    for kind in defenses.ATTACKERS:
        d = prada[kind]
        assert d["clients"] == defenses.QUICK.detection_clients
        assert 0.0 <= d["detection_rate"] <= 1.0 and d["detected"] == len(
            d["answers_before_refusal"]
        )
        # PRADA's test needs more than min_queries (100) distances before it can raise the alarm
        assert all(n > 100 for n in d["answers_before_refusal"]), d
    b = prada["benign"]
    assert 0.0 <= b["false_alarm_rate"] <= 1.0 and 0.0 <= b["refused_images"] <= 1.0
    prada_row = next(r for r in rows.values() if r["defense"] == "prada")
    knockoff = prada["knockoff"]
    assert (prada_row["refused_after"] is not None) == (knockoff["detected"] == 1)
    assert prada_row["benign_refused"] == b["refused_images"]

    table = (out / "results.md").read_text()
    assert all(name in table for name in rows) and "PRADA" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_service(*args, **kwargs):
        raise AssertionError("a cached rerun must not start the service")

    for module in (steps, defenses, probes):
        monkeypatch.setattr(module, "preloaded_service", no_service)
    again = defenses.run(out, quick=True, say=lines.append)
    assert [r["recovery"] for r in again["rows"]] == [r["recovery"] for r in saved["rows"]]
    (out / "results.md").unlink()
    get("defenses").render(out / "results.json")
    assert (out / "results.md").read_text() == table
