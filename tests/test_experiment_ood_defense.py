"""`ood-defense --quick`: the filter against the baselines, then against two attackers."""

from __future__ import annotations

import json

import pytest

from scenarios.experiments import ood_defense


@pytest.mark.timeout(1800)
def test_ood_defense_quick(quick_experiments, tmp_path):
    quick = ood_defense.QUICK
    out = tmp_path / "results" / "ood-defense"
    results = ood_defense.run(out, quick=True, say=print)

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    per = saved["detection"]["per_transform"]
    assert list(per) == list(quick.transforms)
    for m in per.values():
        assert 0.0 <= m["tpr"] <= 1.0 and 0.0 <= m["tnr"] <= 1.0 and 0.0 <= m["auroc"] <= 1.0
        assert set(m["baselines"]) == set(ood_defense.BASELINE_ORDER)
    evasive = saved["evasive_transform"]
    assert evasive in quick.transforms and evasive != "none"
    assert per[evasive]["tpr"] == min(m["tpr"] for k, m in per.items() if k != "none")

    rows = {(r["attacker"], r["filter"]): r for r in saved["rows"]}
    assert list(rows) == [("plain", False), ("plain", True), ("re-encoding", False),
                          ("re-encoding", True)]  # fmt: skip
    for r in rows.values():
        assert 0.0 <= r["flagged"] <= 1.0 and 0.0 <= r["recovery"] <= 1.2
        assert 0.0 <= r["agreement"] <= 1.0 and r["recovery_vs_undefended"] >= 0.0
    assert rows[("plain", False)]["recovery_vs_undefended"] == 1.0
    assert rows[("plain", False)]["agreement"] > 0.3, rows  # the undefended knockoff learned
    # both attackers' images are the same with or without the filter: same verdicts
    assert rows[("plain", False)]["flagged"] == rows[("plain", True)]["flagged"]
    assert rows[("re-encoding", False)]["flagged"] == rows[("re-encoding", True)]["flagged"]

    benign = saved["benign"]
    assert benign["undefended"]["accuracy"] > 0.9 and benign["undefended"]["refused"] == 0
    assert 0.0 <= benign["filter"]["accuracy"] <= benign["undefended"]["accuracy"] + 0.02
    table = (out / "results.md").read_text()
    assert "Table 4" in table and "Table 5" in table and evasive in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
