"""`scenarios run NAME --set field=value`: overrides parsed by the field's type, refused
clearly when wrong, and handed to the experiment as its configuration."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from scenarios.cli import app
from scenarios.experiments import budget, registry
from scenarios.experiments.overrides import apply_overrides
from shared.errors import TestbedError


def test_overrides_follow_each_fields_type():
    config = apply_overrides(
        budget.FULL,
        ["budgets=1000, 2000,5000", "seeds=0", "pool_size=3000", "knockoff.epochs=7",
         "knockoff.lr=0.05", "adaptive.reward_weights=1,0,0.5", "knockoff.progress=yes",
         "pool=natural"],
    )  # fmt: skip
    assert config.budgets == (1_000, 2_000, 5_000) and config.seeds == (0,)
    assert config.pool_size == 3_000 and config.pool == "natural"
    assert config.knockoff.epochs == 7 and config.knockoff.lr == 0.05
    assert config.knockoff.arch == budget.FULL.knockoff.arch  # the rest untouched
    assert config.adaptive.reward_weights == (1.0, 0.0, 0.5) and config.knockoff.progress is True
    assert apply_overrides(config, ["pool_size=none"]).pool_size is None
    assert budget.FULL.budgets[-1] == 60_000  # the defaults are not changed in place


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("budgets", "field=value"),
        ("nope=1", "no field 'nope'; known: victim, pool"),
        ("seeds=a,b", "'a' is not a int"),
        ("knockoff=3", "set one of its fields"),
        ("pool.size=3", "'pool' has no fields"),
        ("knockoff.progress=maybe", "'maybe' is not a bool"),
        ("adaptive.exploration=2", "exploration must be in"),
    ],
)
def test_bad_overrides_are_one_line_errors(assignment, message):
    with pytest.raises(TestbedError, match=message):
        apply_overrides(budget.FULL, [assignment])


def test_the_cli_runs_the_experiment_with_the_overridden_config(tmp_path, monkeypatch):
    seen = {}

    def fake_run(out, quick=False, say=print, config=None):
        seen.update(out=out, quick=quick, config=config)
        return {"rows": [], "seconds": 0.0}

    experiment = registry.get("budget")
    monkeypatch.setitem(registry.EXPERIMENTS, "budget", replace(experiment, run=fake_run))
    args = ["run", "budget", "--quick", "--out", str(tmp_path), "--set", "seeds=3",
            "--set", "budgets=200,400"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen["quick"] and seen["out"] == tmp_path
    assert seen["config"] == replace(budget.QUICK, seeds=(3,), budgets=(200, 400))

    bad = CliRunner().invoke(app, ["run", "budget", "--set", "nope=1"])
    assert bad.exit_code == 2 and "no field 'nope'" in bad.output
    assert "Traceback" not in bad.output
    missing = CliRunner().invoke(app, ["render", "budget", "--out", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "run the experiment first" in missing.output
