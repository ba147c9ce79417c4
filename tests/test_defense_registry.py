"""A defense is one file: a toy registered here is switched on by its own VICTIM_* variable in
the service's answers and appears in the utility evaluator, with no other file edited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import httpx
import numpy as np
import pytest
import torch
from pydantic import Field

from defense.evaluate import default_configs, evaluate_utility
from defense.registry import (
    BuildContext,
    DefenseSettings,
    defenses,
    register_defense,
    unregister_defense,
)
from shared.datasets import load_dataset
from shared.imaging import encode_image
from shared.pipeline import AnswerBatch
from tests.servers import running_service
from victim_service.settings import VictimSettings


class ToySettings(DefenseSettings):
    shift: int | None = Field(None, ge=1)

    sweeps: ClassVar = ({"shift": 1},)


@dataclass
class ToyStep:
    """Answers every row with certainty for the class `shift` places after the true one."""

    shift: int
    name: str = "toy"

    def __call__(self, batch: AnswerBatch) -> AnswerBatch:
        wrong = (batch.probs.argmax(1) + self.shift) % batch.probs.shape[1]
        return batch.replace(
            probs=torch.nn.functional.one_hot(wrong, batch.probs.shape[1]).double()
        )


@pytest.fixture
def toy():
    @register_defense("toy", settings=ToySettings, switch="shift", order=99)
    def build(settings: ToySettings, ctx: BuildContext) -> ToyStep:
        return ToyStep(settings.shift)

    yield
    unregister_defense("toy")


def labels_from(url: str, images: np.ndarray) -> list[int]:
    files = [("images", (f"{i}.png", encode_image(a), "image/png")) for i, a in enumerate(images)]
    response = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
    assert response.status_code == 200, response.text
    return [int(np.argmax(p["probabilities"])) for p in response.json()["predictions"]]


def test_a_toy_defense_is_switched_on_by_its_variable_in_service_and_evaluator(
    toy, victim_checkpoint, monkeypatch
):
    digits = load_dataset("digits", "test").arrays(32)[:16]
    settings = VictimSettings(checkpoint=victim_checkpoint, device="cpu", amp=False)
    assert settings.defense("toy").shift is None
    with running_service(settings) as url:
        plain = labels_from(url, digits)
    monkeypatch.setenv("VICTIM_TOY_SHIFT", "3")
    settings = VictimSettings(checkpoint=victim_checkpoint, device="cpu", amp=False)
    with running_service(settings) as url:
        shifted = labels_from(url, digits)
    assert shifted == [(p + 3) % 10 for p in plain]

    configs = {c.name: c for c in default_configs()}
    assert "toy(shift=1)" in configs and "toy" in configs["all"].defenses
    result = evaluate_utility(
        victim_checkpoint, "digits", [configs["none"], configs["toy(shift=1)"]], limit=100,
        progress=False,
    )  # fmt: skip
    none, toy_row = result["results"]
    assert none["accuracy"] > 0.8 and toy_row["accuracy"] < 0.1


def test_todays_variable_names_and_keywords_reach_each_defense(monkeypatch, tmp_path):
    monkeypatch.setenv("VICTIM_REVERSE_SIGMOID_BETA", "0.5")
    monkeypatch.setenv("VICTIM_REVERSE_SIGMOID_GAMMA", "0.2")
    monkeypatch.setenv("VICTIM_NOISE_STD", "0.05")
    monkeypatch.setenv("VICTIM_PRADA_THRESHOLD", "0.95")
    monkeypatch.setenv("VICTIM_PRADA_MIN_QUERIES", "50")
    monkeypatch.setenv("VICTIM_PRADA_HISTORY", "300")
    monkeypatch.setenv("VICTIM_PRADA_ACTION", "label")
    monkeypatch.setenv("VICTIM_PRADA_MAX_CLIENTS", "7")
    monkeypatch.setenv("VICTIM_OOD_DETECTOR", str(tmp_path / "ood.pt"))
    monkeypatch.setenv("VICTIM_OOD_ACTION", "reject")
    s = VictimSettings()
    assert (s.defense("reverse_sigmoid").beta, s.defense("reverse_sigmoid").gamma) == (0.5, 0.2)
    assert s.defense("noise").std == 0.05
    prada = s.defense("prada")
    assert (prada.threshold, prada.min_queries, prada.history) == (0.95, 50, 300)
    assert (prada.action, prada.max_clients) == ("label", 7)
    assert s.defense("ood").detector == tmp_path / "ood.pt" and s.defense("ood").action == "reject"
    # keywords beat the environment, flat or nested
    s = VictimSettings(prada_threshold=0.8, defenses={"noise": {"std": 0.2}})
    assert s.defense("prada").threshold == 0.8 and s.defense("noise").std == 0.2


def test_defaults_live_in_the_defense_and_perturb():
    s = VictimSettings()
    assert all(s.defense(d.name).model_dump()[d.switch] is None for d in defenses())  # all off
    rs = s.defense("reverse_sigmoid")
    assert rs.gamma == 0.1 and type(rs).sweeps[0] == {"beta": 1.0, "gamma": 0.1}
    assert s.defense("prada").min_queries == 100 and s.defense("prada").test_every == 10


def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("VICTIM_PRADA_THRESHOLD", "1.5")
    with pytest.raises(ValueError, match="VICTIM_PRADA_THRESHOLD") as info:
        VictimSettings()
    line = [m for m in str(info.value).splitlines() if "VICTIM_PRADA_THRESHOLD" in m]
    assert line and "less than 1" in line[0]
    with pytest.raises(ValueError, match="unknown defense 'nope'"):
        VictimSettings(defenses={"nope": {}})


def test_evaluate_utility_command_writes_the_table_and_the_json(victim_checkpoint, tmp_path):
    """`defense evaluate-utility`: every default row, overrides from the shortcut options and
    from --set (a string on the command line) shown in the row's name and applied; a bad
    --set is one line."""
    import json

    from typer.testing import CliRunner

    from defense.cli import app

    out = tmp_path / "utility.json"
    args = [
        "evaluate-utility", "--victim", str(victim_checkpoint), "--dataset", "digits",
        "--limit", "60", "--rs-beta", "0.5", "--set", "noise.std=0.25", "--json", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {row["defense"]: row for row in json.loads(out.read_text())["results"]}
    assert list(rows) == [
        "none", "prada(threshold=0.9)", "reverse_sigmoid(beta=0.5,gamma=0.1)", "noise(std=0.25)",
        "round(2)", "top-1", "label-only", "all",
    ]  # fmt: skip
    assert rows["noise(std=0.25)"]["settings"] == {"noise": {"std": 0.25}}
    assert rows["all"]["settings"]["reverse_sigmoid"]["beta"] == 0.5
    assert (
        rows["none"]["accuracy"] > 0.8
        and rows["label-only"]["accuracy"] == rows["none"]["accuracy"]
    )
    assert "| noise(std=0.25) |" in result.output and f"wrote {out}" in result.output

    bad = CliRunner().invoke(app, ["evaluate-utility", "--victim", str(victim_checkpoint),
                                   "--dataset", "digits", "--set", "noise=0.1"])  # fmt: skip
    assert bad.exit_code == 2 and "expected DEFENSE.FIELD=VALUE" in bad.output
    assert "Traceback" not in bad.output
    # a bad value names what the user typed, not the service's variable
    bad = CliRunner().invoke(app, ["evaluate-utility", "--victim", str(victim_checkpoint),
                                   "--dataset", "digits", "--set", "noise.std=-1"])  # fmt: skip
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "noise.std='-1': Input should be greater than 0" in bad.output, bad.output
    assert "VICTIM_NOISE_STD" not in bad.output
    for option in ("--clients", "--batch-size", "--limit"):  # each once divided by zero
        bad = CliRunner().invoke(app, ["evaluate-utility", "--victim", str(victim_checkpoint),
                                       option, "0"])  # fmt: skip
        assert bad.exit_code == 2 and "Traceback" not in bad.output
        assert f"Invalid value for '{option}'" in bad.output, bad.output
