"""Docker cannot run here: check the compose file and Dockerfile against the code instead."""

from __future__ import annotations

import re
import shlex

import pytest
import typer
import yaml

from attacker.cli import app as attacker_app
from tests.servers import ROOT
from victim_service.cli import app as victim_app
from victim_service.settings import VictimSettings

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
RAW = (ROOT / "docker-compose.yml").read_text()


def test_services_volumes_and_startup_order():
    services = COMPOSE["services"]
    assert {"victim", "attacker", "victim-train"} <= set(services)
    assert services["attacker"]["depends_on"]["victim"]["condition"] == "service_healthy"
    trained = services["victim"]["depends_on"]["victim-train"]["condition"]
    assert trained == "service_completed_successfully"
    assert set(COMPOSE["volumes"]) == {"models", "runs"}
    assert "runs:/runs" in services["attacker"]["volumes"]
    assert any(v.startswith("models:/models") for v in services["victim"]["volumes"])


def test_victim_healthcheck_probes_readiness():
    check = COMPOSE["services"]["victim"]["healthcheck"]
    assert "/readyz" in " ".join(check["test"]) and ":8000/" in " ".join(check["test"])


def test_victim_reserves_a_gpu_and_picks_it_automatically():
    victim = COMPOSE["services"]["victim"]
    device = victim["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert victim["environment"]["VICTIM_DEVICE"] == "auto"


def test_every_victim_variable_named_in_the_file_is_a_real_setting():
    fields = {f"VICTIM_{name.upper()}" for name in VictimSettings.model_fields}
    named = set(re.findall(r"\b(VICTIM_[A-Z_]+)\b", RAW))
    assert named and named <= fields, named - fields
    environment = COMPOSE["services"]["victim"]["environment"]
    settings = VictimSettings(
        **{k.removeprefix("VICTIM_").lower(): v for k, v in environment.items()}
    )
    assert settings.output == "probs" and settings.batch_max_wait_ms == 2
    for documented in ("VICTIM_OUTPUT", "VICTIM_TOP_K", "VICTIM_ROUND_DECIMALS",
                       "VICTIM_OOD_DETECTOR", "VICTIM_OOD_ACTION", "VICTIM_API_KEYS"):  # fmt: skip
        assert documented in named


def _commands(service: str) -> list[list[str]]:
    command = COMPOSE["services"][service]["command"]
    text = command if isinstance(command, str) else shlex.join(command)
    text = text.replace("$${ATTACKER_URL}", "http://victim:8000").replace(
        "$${ATTACKER_BUDGET}", "10000"
    )
    text = text.removeprefix("sh -c ").strip().strip('"')
    return [shlex.split(part) for part in re.split(r"&&|\|\|", text)]


def _parses(app: typer.Typer, argv: list[str]) -> None:
    """Let click parse the arguments exactly as the console script would, without running."""
    group = typer.main.get_command(app)
    sub = group.get_command(group.context_class(group), argv[0])
    assert sub is not None, f"no command {argv[0]!r}"
    sub.make_context(argv[0], list(argv[1:]))


def test_the_attacker_job_and_trainer_use_real_cli_options():
    parsed = 0
    for argv in _commands("attacker") + _commands("victim-train"):
        program, *args = argv
        if program == "attacker":
            _parses(attacker_app, args)
        elif program == "victim-service":
            _parses(victim_app, args)
        else:
            continue
        parsed += 1
    assert parsed == 4
    with pytest.raises(Exception, match="No such option"):
        _parses(attacker_app, ["query", "--no-such-option"])


def test_dockerfile_installs_from_the_lock_file():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "uv sync --frozen" in dockerfile and "uv.lock" in dockerfile
    assert "UV_PYTHON_DOWNLOADS=never" in dockerfile
    assert "victim_service.app:create_app" in dockerfile
