"""`budget --quick` end to end: random and adaptive through the real service, over seeds."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scenarios.cli import app
from scenarios.experiments import budget
from shared.errors import TestbedError


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


def _piece(budgets: list[int], seeds: list[int], recovery: float, **config: object) -> dict:
    """A results dict as a run of the grid's piece (budgets x seeds) writes it."""
    rows = [{"strategy": s, "seed": k, "queries": b, "recovery": recovery + b / 1e5 + k / 100,
             "victim_accuracy": 0.86}
            for s in ("random", "adaptive") for k in seeds for b in budgets]  # fmt: skip
    settings = {**asdict(replace(budget.FULL, budgets=tuple(budgets), seeds=tuple(seeds))),
                **config}  # fmt: skip
    return {**budget.assemble(rows, settings, False, "victim.pt"), "seconds": 10.0}


def replace_keep(piece: dict, keep: str) -> dict:
    knockoff = {**piece["config"]["knockoff"], "keep": keep}
    return {**piece, "config": {**piece["config"], "knockoff": knockoff}}


def test_merge_joins_pieces_of_the_grid_into_the_results_one_run_would_write(tmp_path):
    small, large = _piece([1000, 2000], [0, 1, 2], 0.4), _piece([20000], [0], 0.8)
    merged = budget.merge([small, large])
    rows = small["rows"] + large["rows"]
    assert sorted(map(str, merged["rows"])) == sorted(map(str, rows))
    assert merged["config"]["budgets"] == [1000, 2000, 20000]
    assert merged["summary"] == budget.summarize(merged["rows"])
    assert merged["verdict"] == budget.verdict(merged["summary"])
    assert merged["seconds"] == 20.0 and merged["merged_from"] == 2
    assert any("20000: seeds [0]" in note for note in merged["notes"])  # the uneven point said
    for name, piece in (("a", small), ("b", large)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(piece))
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", "budget", str(tmp_path / "a"), str(tmp_path / "b"),
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["summary"] == merged["summary"]
    assert "| random | 20000 | 1 |" in (out / "results.md").read_text()


def test_merge_joins_strategies_run_apart():
    """The GPU run asks each (strategy, seed) in its own process: the pieces differ in their
    strategies too, and join in the experiment's order of strategies."""
    adaptive, random = _piece([1000], [0], 0.5), _piece([1000], [0], 0.4)
    adaptive["rows"] = [r for r in adaptive["rows"] if r["strategy"] == "adaptive"]
    adaptive["config"]["strategies"] = ["adaptive"]
    random["rows"] = [r for r in random["rows"] if r["strategy"] == "random"]
    random["config"]["strategies"] = ["random"]
    merged = budget.merge([adaptive, random])
    assert merged["config"]["strategies"] == ["random", "adaptive"]
    assert [r["strategy"] for r in merged["rows"]] == ["random", "adaptive"]
    assert merged["verdict"]["adaptive_minus_random"]["1000"] == pytest.approx(0.1)


def test_merge_refuses_pieces_of_different_grids_and_points_measured_twice(tmp_path: Path):
    base = _piece([1000], [0], 0.4)
    with pytest.raises(TestbedError, match="in two of the results"):
        budget.merge([base, _piece([1000, 2000], [0], 0.4)])
    with pytest.raises(TestbedError, match="not pieces of one grid"):
        budget.merge([base, _piece([2000], [0], 0.4, pool="natural")])
    with pytest.raises(TestbedError, match="not pieces of one grid"):
        budget.merge([base, {**_piece([2000], [0], 0.4), "victim_checkpoint": "other.pt"}])
    older = _piece([2000], [0], 0.4)  # written before knockoffs had `keep`: the best epoch's
    del older["config"]["knockoff"]["keep"]
    assert budget.merge([replace_keep(base, "best"), older])["merged_from"] == 2
    with pytest.raises(TestbedError, match="not pieces of one grid"):
        budget.merge([replace_keep(base, "last"), older])
    result = CliRunner().invoke(app, ["merge", "granularity", str(tmp_path), "--out", "x"])
    assert result.exit_code != 0 and "not pieces of a grid" in result.output


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
