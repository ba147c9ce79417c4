"""`budget --quick` end to end: random and adaptive through the real service, over seeds."""

from __future__ import annotations

import json

import pytest

from scenarios.experiments import budget


def _rows(points: dict[tuple[str, int], list[float]]) -> list[dict]:
    return [{"strategy": s, "queries": b, "seed": k, "recovery": r}
            for (s, b), values in points.items() for k, r in enumerate(values)]  # fmt: skip


def test_the_verdict_weighs_the_gap_against_the_seeds_noise():
    close = budget.verdict(budget.summarize(_rows(
        {("random", 1000): [0.5, 0.6], ("adaptive", 1000): [0.52, 0.55]})))  # fmt: skip
    assert close["adaptive_minus_random"]["1000"] == pytest.approx(-0.015)
    assert close["seed_std"]["1000"] == pytest.approx(0.05)
    assert close["adaptive_matches_random"] and not close["adaptive_beats_random"]
    worse = budget.verdict(budget.summarize(_rows(
        {("random", 1000): [0.8, 0.8], ("random", 2000): [0.9, 0.9],
         ("adaptive", 1000): [0.8, 0.8], ("adaptive", 2000): [0.6, 0.62]})))  # fmt: skip
    assert not worse["adaptive_matches_random"]  # one budget far below is enough
    better = budget.verdict(budget.summarize(_rows(
        {("random", 1000): [0.5, 0.52], ("adaptive", 1000): [0.7, 0.72]})))  # fmt: skip
    assert better["adaptive_beats_random"] and better["adaptive_matches_random"]


@pytest.mark.timeout(1800)
def test_budget_quick_through_the_real_service(quick_experiments, tmp_path):
    out = tmp_path / "budget"
    budget.run(out, quick=True, say=lambda _: None)
    saved = json.loads((out / "results.json").read_text())
    config = budget.QUICK
    assert saved["experiment"] == "budget" and saved["quick"]
    assert saved["seed"] == list(config.seeds)
    assert len(saved["rows"]) == len(config.strategies) * len(config.seeds) * len(config.budgets)
    for row in saved["rows"]:
        assert 0.0 <= row["recovery"] <= 1.2 and 0.0 <= row["agreement"] <= 1.0
    curves: dict[str, list[dict]] = {}
    for point in saved["summary"]:
        curves.setdefault(point["strategy"], []).append(point)
        assert point["seeds"] == len(config.seeds)
        assert point["recovery_min"] <= point["recovery_mean"] <= point["recovery_max"]
    assert set(curves) == {"random", "adaptive"}
    for points in curves.values():
        budgets = [p["queries"] for p in points]
        assert budgets == sorted(set(budgets)) == sorted(config.budgets)  # increasing
        # more queries, a better knockoff (largest against smallest budget, seed means)
        assert points[-1]["recovery_mean"] > points[0]["recovery_mean"], points
    verdict = saved["verdict"]
    assert set(verdict["adaptive_minus_random"]) == {str(b) for b in config.budgets}
    assert isinstance(verdict["adaptive_matches_random"], bool)
    assert "adaptive" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
