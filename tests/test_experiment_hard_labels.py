"""`hard-labels --quick` end to end: Copycat through a label-only API, balanced or not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scenarios.experiments import hard_labels


def test_label_spread_measures_how_unevenly_labels_fall():
    even = hard_labels.label_spread(np.arange(100) % 10, 10)
    skewed = hard_labels.label_spread(np.array([0] * 91 + list(range(1, 10))), 10)
    assert even["label_entropy"] == pytest.approx(1.0) and even["top_class_share"] == 0.1
    assert skewed["label_entropy"] < 0.5 and skewed["top_class_share"] == 0.91


@pytest.mark.timeout(1800)
def test_hard_labels_quick_through_the_real_service(quick_experiments, tmp_path):
    out = tmp_path / "hard-labels"
    hard_labels.run(out, quick=True, say=lambda _: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "hard-labels" and saved["quick"]
    settings = {"Copycat, balanced", "Copycat, not balanced", "probabilities (Knockoff Nets)"}
    assert {r["setting"] for r in saved["rows"]} == settings
    assert [r["queries"] for r in saved["rows"]] == sorted(r["queries"] for r in saved["rows"])
    for row in saved["rows"]:
        assert 0.0 <= row["recovery"] <= 1.2 and 0.0 <= row["macro_recovery"] <= 1.2
        assert 0.0 <= row["agreement"] <= 1.0 and 0.0 <= row["label_entropy"] <= 1.0
        assert row["hard_labels"] == row["setting"].startswith("Copycat")
        assert row["balance"] == (row["setting"] == "Copycat, balanced")
    largest = max(r["queries"] for r in saved["rows"])
    at = {r["setting"]: r for r in saved["rows"] if r["queries"] == largest}
    # probabilities carry more than labels (Atli et al.): the reference beats unbalanced Copycat
    assert (
        at["probabilities (Knockoff Nets)"]["agreement"] > at["Copycat, not balanced"]["agreement"]
    ), at
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
