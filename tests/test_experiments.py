"""The experiments package: the registry, the CLI, and `granularity --quick` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from scenarios.cli import app
from scenarios.experiments import granularity, steps
from scenarios.experiments.cache import REVISIONS, cached_path, config_hash


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_each_cached_artefact_has_its_configuration_written_beside_it(tmp_path):
    config = {"dataset": "digits", "epochs": 8, "nested": {"lr": 0.05}}
    path = cached_path("victims", config, ".pt", root=tmp_path)
    keyed = {**config, "revision": REVISIONS["victims"]}
    key = config_hash(keyed)
    assert path == (tmp_path / "victims" / f"{key}.pt").resolve() and not path.exists()
    assert json.loads(path.with_name(f"{key}.json").read_text()) == keyed


def test_an_artefact_of_older_code_is_not_reused_once_its_kind_is_revised(tmp_path, monkeypatch):
    """The same configuration at another revision of its kind is another artefact: a cache made
    by the code before a change that alters what it makes is left unused (other kinds keep
    theirs), and a kind without a revision is refused rather than cached unversioned."""
    config = {"attack": "jbda", "params": {"rounds": 2}}
    before = cached_path("transfer", config, ".sqlite", root=tmp_path)
    before.write_bytes(b"made by the older code")
    victim = cached_path("victims", config, ".pt", root=tmp_path)
    monkeypatch.setitem(REVISIONS, "transfer", REVISIONS["transfer"] + 1)
    after = cached_path("transfer", config, ".sqlite", root=tmp_path)
    assert after != before and not after.exists()
    assert cached_path("victims", config, ".pt", root=tmp_path) == victim
    with pytest.raises(KeyError, match="no revision"):
        cached_path("unversioned", config, ".pt", root=tmp_path)


def test_an_artefact_of_a_replaced_archive_is_made_again(tmp_path, monkeypatch):
    """A configuration names its data by dataset name; an archive replaced under that name (a
    new Tiny-ImageNet subset) keys every artefact made from it anew, at any depth, and leaves
    the keys of configurations that name no archive as they were."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("TESTBED_DATA_DIR", str(data))
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path / "cache"))
    archive = data / "tiny-imagenet-subset.tar.gz"
    archive.write_bytes(b"the first subset")
    config = {"attack": "knockoff", "pools": ["natural", "tiny-imagenet-attacker"]}
    plain = {"attack": "knockoff", "pools": ["natural"]}
    before = cached_path("transfer", config, ".sqlite", root=tmp_path)
    untouched = cached_path("transfer", plain, ".sqlite", root=tmp_path)
    assert untouched.name == f"{config_hash({**plain, 'revision': REVISIONS['transfer']})}.sqlite"
    assert json.loads(before.with_suffix(".json").read_text())["data"].keys() == {
        "tiny-imagenet-attacker"
    }
    archive.write_bytes(b"a second subset, other images")
    assert cached_path("transfer", config, ".sqlite", root=tmp_path) != before
    assert cached_path("transfer", plain, ".sqlite", root=tmp_path) == untouched


def test_experiments_are_listed_and_unknown_names_are_one_line_errors(tmp_path):
    listed = CliRunner().invoke(app, ["experiments"])
    assert listed.exit_code == 0 and "granularity" in listed.output
    for command in (["run", "nope", "--out", str(tmp_path)], ["render", "nope"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "unknown experiment 'nope'" in result.output
        assert "Traceback" not in result.output


def test_the_papers_scale_is_a_resnet34_at_64_px_and_unknown_scales_are_one_line_errors(tmp_path):
    from scenarios.experiments.registry import get

    for name in ("granularity", "budget"):
        config = get(name).config_at("papers")
        assert (config.victim.arch, config.victim.input_size) == ("resnet34", 64)
        assert config.victim.dataset == "cifar10-jpeg" and config.knockoff.arch == "resnet34"
        assert get(name).config_at("default").victim.input_size == 32
    result = CliRunner().invoke(app, ["run", "hard-labels", "--scale", "papers"])
    assert result.exit_code == 2 and "unknown scale of hard-labels 'papers'" in result.output
    result = CliRunner().invoke(app, ["run", "budget", "--quick", "--scale", "papers"])
    assert result.exit_code != 0 and "disagree" in result.output
    assert "Traceback" not in result.output


def test_a_victim_is_trained_at_its_spec_input_size(quick_experiments):
    spec = steps.VictimSpec.of("digits", epochs=1, input_size=16)
    card = torch.load(steps.cached_victim(spec), weights_only=True)["card"]
    assert card["input_size"] == 16 and card["arch"] == "cnn5"


@pytest.mark.timeout(1800)
def test_granularity_quick_through_the_real_service(quick_experiments, tmp_path, monkeypatch):
    """Six settings, one budget, the real service for each; probabilities beat labels."""
    assert (quick_experiments / "victims").is_dir()  # the root comes from the setting
    lines: list[str] = []
    out = tmp_path / "results" / "granularity"
    results = granularity.run(out, quick=True, say=lines.append)

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["experiment"] == "granularity" and saved["quick"] and saved["seed"] == 0
    rows = {row["setting"]: row for row in saved["rows"]}
    assert list(rows) == [s.name for s in granularity.SETTINGS]
    assert saved["victim_accuracy"] > 0.9
    for row in rows.values():
        assert row["queries"] == granularity.QUICK.query.budget
        assert 0.0 <= row["knockoff_accuracy"] <= 1.0 and 0.0 <= row["agreement"] <= 1.0
        assert 0.0 <= row["recovery"] <= 1.5 and row["seconds"] > 0
    probs, label = rows["probabilities"], rows["label only"]
    assert probs["agreement"] > label["agreement"], rows
    assert probs["agreement"] > 0.3, rows  # the knockoff learned: 3x a 10-class guess
    table = (out / "results.md").read_text()
    assert all(name in table for name in rows)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # cached by configuration: a rerun needs no service and gives the same figures
    def no_service(*args, **kwargs):
        raise AssertionError("a cached rerun must not query again")

    monkeypatch.setattr(steps, "preloaded_service", no_service)
    again = granularity.run(out, quick=True, say=lines.append)
    assert [r["agreement"] for r in again["rows"]] == [r["agreement"] for r in saved["rows"]]

    # the table and the figure come from results.json alone (the rerun rewrote them)
    table = (out / "results.md").read_text()
    (out / "results.md").unlink()
    (out / "results.png").unlink()
    rendered = CliRunner().invoke(app, ["render", "granularity", "--out", str(out)])
    assert rendered.exit_code == 0, rendered.output
    assert (out / "results.md").read_text() == table and (out / "results.png").exists()
