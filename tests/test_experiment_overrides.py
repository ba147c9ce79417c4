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
        ("seeds=a,b", "'a' is not an integer"),
        ("knockoff=3", "set one of its fields"),
        ("pool.size=3", "'pool' has no fields"),
        ("knockoff.progress=maybe", "'maybe' is not true or false"),
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
    # a torn, a foreign and an older results.json: one line each, for render and merge alike
    folder = tmp_path / "old"
    folder.mkdir()
    for body, line in [
        ("{not json", "results.json is not valid JSON"),
        ('{"experiment": "granularity", "rows": []}',
         "holds the results of 'granularity', not the results of 'budget'"),
        ("[1, 2]", "holds no 'experiment' key, not the results of 'budget'"),
        ('{"experiment": "budget"}', "lacks the key"),
    ]:  # fmt: skip
        (folder / "results.json").write_text(body)
        merge = ["merge", "budget", str(folder), str(folder), "--out", str(tmp_path / "m")]
        for args in (["render", "budget", "--out", str(folder)], merge):
            torn = CliRunner().invoke(app, args)
            assert torn.exit_code == 2 and "Traceback" not in torn.output, torn.output
            assert line in " ".join(torn.output.split()), torn.output
    # a results folder that cannot be made fails before the experiment, in one line
    seen.clear()
    (tmp_path / "a-file").write_text("")
    blocked = CliRunner().invoke(app, ["run", "budget", "--out", str(tmp_path / "a-file" / "r")])
    assert blocked.exit_code == 2 and "Traceback" not in blocked.output and not seen
    assert f"error: {tmp_path / 'a-file' / 'r'}: Not a directory" in blocked.output


def test_fields_an_experiment_sets_itself_are_refused_with_where_to_set_them():
    """`--set knockoff.arch=resnet18` on `architecture` was accepted, written into the results'
    configuration and ignored: each row sets the knockoff's architecture, as every experiment
    sets its knockoffs' seed."""
    for name in registry.experiment_names():
        experiment = registry.get(name)
        assert "knockoff.seed" in experiment.set_elsewhere, name
        for dotted, reason in experiment.set_elsewhere.items():
            value = experiment.full
            for part in dotted.split("."):  # a real field of the configuration
                value = getattr(value, part)
            with pytest.raises(TestbedError, match=f"--set {dotted}: .* ignore it; "):
                apply_overrides(experiment.full, [f"{dotted}=1"], experiment.set_elsewhere)
            assert reason
    result = CliRunner().invoke(app, ["run", "architecture", "--set", "knockoff.arch=resnet18"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "each of archs trains in turn (set archs=...)" in " ".join(result.output.split())


@pytest.mark.parametrize(("assignment", "message"), [
    ("pool=nope", "unknown dataset 'nope'"),
    ("victim.dataset=nope", "unknown dataset 'nope'"),
    ("knockoff.arch=nope", "unknown architecture 'nope'"),
    ("strategies=random,greedy", "strategies must be one of random, adaptive, not 'greedy'"),
    ("knockoff.keep=middle", "keep must be one of best, last, not 'middle'"),
    ("budgets=1000,0", "budgets: 0 is below 1"),
    ("knockoff.epochs=0", "knockoff.epochs: 0 is below 1"),
    ("seeds=-1", "seeds: -1 is below 0"),
    ("seeds=", "--set seeds: no value given"),
])  # fmt: skip
def test_a_bad_name_is_refused_before_the_experiment_runs(assignment, message, monkeypatch):
    """`--set pool=nope` failed only once the victim was trained (9 min at the default scale);
    `--set budgets=0` once the service was up, `--set seeds=` with an IndexError."""

    def ran(*args, **kwargs):
        raise AssertionError("the experiment ran before its names were checked")

    monkeypatch.setitem(registry.EXPERIMENTS, "budget", replace(registry.get("budget"), run=ran))
    result = CliRunner().invoke(app, ["run", "budget", "--set", assignment])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in " ".join(result.output.split()), result.output


def test_every_scale_of_every_experiment_names_only_what_exists():
    from scenarios.experiments.overrides import check_config

    for name in registry.experiment_names():
        experiment = registry.get(name)
        for config in (experiment.full, experiment.quick, experiment.papers):
            if config is not None:
                check_config(config)
