"""Docker cannot run here: check the compose files and Dockerfile against the code instead.

`make compose-check` (scripts/compose-check.sh) is the end-to-end run, where docker works.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from attacker.cli import app as attacker_app
from defense.registry import defenses
from victim_service.cli import app as victim_app
from victim_service.settings import VictimSettings

ROOT = Path(__file__).resolve().parents[1]
RAW = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(RAW)  # safe_load: no `!reset`-style tags, which Compose v1 rejects
GPU = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
HOSTNET_RAW = (ROOT / "docker-compose.hostnet.yml").read_text()
HOSTNET = yaml.safe_load(HOSTNET_RAW)
PORT = "${TESTBED_PORT:-8000}"


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


def test_cpu_by_default_and_the_gpu_through_its_override_file():
    # `docker compose up` must work without a GPU: no device reservation in the main file
    for name, service in COMPOSE["services"].items():
        assert "deploy" not in service and "runtime" not in service, name
    assert COMPOSE["services"]["victim"]["environment"]["VICTIM_DEVICE"] == "auto"
    assert set(GPU["services"]) == {"victim"}
    device = GPU["services"]["victim"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] == "all"
    assert "docker-compose.gpu.yml" in RAW  # the main file says how


def test_every_service_shares_one_image_built_from_the_project():
    for name, service in COMPOSE["services"].items():
        assert service["build"] == ".", name
        assert service["image"] == "${TESTBED_IMAGE:-extraction-testbed:latest}", name


def test_the_host_network_override_keeps_everything_on_loopback():
    services = HOSTNET["services"]
    assert set(services) == set(COMPOSE["services"])
    assert all(s["network_mode"] == "host" for s in services.values())
    victim = services["victim"]
    command = victim["command"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == PORT
    assert f"http://127.0.0.1:{PORT}/readyz" in " ".join(victim["healthcheck"]["test"])
    assert services["attacker"]["environment"]["ATTACKER_URL"] == f"http://127.0.0.1:{PORT}"
    # no other address anywhere in the override, comments included
    addresses = re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", HOSTNET_RAW)
    assert addresses and set(addresses) == {"127.0.0.1"}
    assert "localhost" not in HOSTNET_RAW and "victim:8000" not in HOSTNET_RAW
    assert not any("ports" in s for s in services.values())


def test_the_port_is_published_outside_the_main_file():
    # Compose v1 refuses `ports` with host networking and cannot drop them in an override, so
    # the main file publishes nothing: docker-compose.override.yml (read by a plain `up`) and
    # the GPU override (named with -f, which skips the former) do, on the same knob.
    assert not any("ports" in s for s in COMPOSE["services"].values())
    default = yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())
    assert default["services"] == {"victim": {"ports": [f"{PORT}:8000"]}}
    assert GPU["services"]["victim"]["ports"] == [f"{PORT}:8000"]


def test_the_attack_budget_can_be_lowered_from_outside():
    environment = COMPOSE["services"]["attacker"]["environment"]
    assert environment["ATTACKER_BUDGET"] == "${ATTACKER_BUDGET:-10000}"
    assert environment["ATTACKER_URL"] == "http://victim:8000"


def test_every_victim_variable_named_in_the_file_is_a_real_setting():
    fields = {f"VICTIM_{name.upper()}" for name in VictimSettings.model_fields} - {
        "VICTIM_DEFENSES"
    }
    fields |= {d.env_name(f) for d in defenses() for f in d.settings.model_fields}
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


def test_shell_commands_are_one_line_each():
    # a newline inside `sh -c "..."` ends the command: `--db` on its own line is "not found"
    for name, service in COMPOSE["services"].items():
        command = service.get("command")
        if isinstance(command, str):
            assert "\n" not in command.strip(), name


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


DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.strip() for line in DOCKERFILE.splitlines() if line.strip() and not line.startswith("#")
]


def test_dockerfile_installs_from_the_lock_file():
    assert "uv sync --frozen --no-dev" in DOCKERFILE and "uv.lock" in DOCKERFILE
    assert "UV_PYTHON_DOWNLOADS=never" in DOCKERFILE
    assert "victim_service.app:create_app" in DOCKERFILE


def test_dockerfile_base_image_is_an_argument():
    assert INSTRUCTIONS[0] == "ARG BASE_IMAGE=python:3.11-slim"
    assert [i for i in INSTRUCTIONS if i.startswith("FROM")] == ["FROM ${BASE_IMAGE}"]


def test_dockerfile_copies_the_whole_project_after_the_dependencies():
    copies = [i for i in INSTRUCTIONS if i.startswith("COPY")]
    assert copies == ["COPY pyproject.toml uv.lock ./", "COPY . ."]
    no_project = next(i for i, line in enumerate(INSTRUCTIONS) if "--no-install-project" in line)
    assert no_project < INSTRUCTIONS.index("COPY . .")


def test_dockerignore_keeps_local_state_out_and_every_package_in():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".uv-bootstrap", "runs"} <= ignored
    needed = {"pyproject.toml", "uv.lock", "README.md"}
    needed |= {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert "victim_service" in needed
    assert not needed & ignored
    assert not any(pattern in {"*", "**", "*.py", "**/*.py"} for pattern in ignored)


def test_compose_check_is_a_make_target_outside_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^compose-check:.*\n\tscripts/compose-check\.sh$", makefile, re.M)
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "compose" not in test_recipe
    script = ROOT / "scripts" / "compose-check.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "docker-compose.hostnet.yml" in text and "--network host" in text
    assert "ATTACKER_BUDGET=${ATTACKER_BUDGET:-3000}" in text
    assert "recovery=" in text and "seconds=" in text
