"""The READMEs' commands and variables exist: an option renamed or removed in the code, but not in
the prose, would send a user to an error (or, for a variable, to a setting silently ignored)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import runpy
import sys

import pytest
import typer

from tests.servers import ROOT

DOCS = ("README.md", "results/README.md")
APPS = {"attacker": "attacker.cli", "defense": "defense.cli", "scenarios": "scenarios.cli",
        "victim-service": "victim_service.cli"}  # fmt: skip
MAKE = {"demo": ("scenarios", "demo"), "reliability": ("python -m reliability", "")}
"""`make <target> ARGS="..."`: the program and words the target puts before ARGS."""
COMMAND = re.compile(
    r"(?:^|[\s/])(attacker|defense|scenarios|victim-service|python -m [\w.]+|make [\w-]+)(\s.*)?$"
)


def commands(text: str) -> list[tuple[str, str]]:
    """(program, its arguments) for each command line with an option, in code blocks (lines
    continued with a backslash joined) and in inline code; comments dropped."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    lines = [line for b in blocks for line in re.sub(r"\\\n\s*", " ", b).splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    found = []
    for line in lines:
        match = COMMAND.search(re.split(r"\s#\s|\s\s#", line)[0])
        if match and "--" in (match[2] or ""):
            found.append((match[1], " ".join(re.sub(r"[][]", " ", match[2]).split())))
    return found


def typer_options(program: str, words: list[str]) -> tuple[str, set[str]]:
    """The subcommand `words` lead to in a project CLI, and its options."""
    command = typer.main.get_command(importlib.import_module(APPS[program]).app)
    path = [program]
    for word in words:
        if word.startswith("-") or not hasattr(command, "commands"):
            break
        assert word in command.commands, f"`{' '.join(path)}` has no subcommand {word!r}"
        command, path = command.commands[word], [*path, word]
    options = {"--help"}
    for param in command.params:
        options.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return " ".join(path), options


def help_options(module: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The options `python -m module --help` lists (argparse and typer alike), run in-process."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    monkeypatch.setenv("COLUMNS", "250")  # no option name cut by a narrow terminal
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), contextlib.suppress(SystemExit):
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    return set(re.findall(r"--[a-z][a-z0-9-]*", shown.getvalue())) | {"--help"}


def test_the_extractor_finds_commands_in_blocks_spans_and_make_lines():
    text = (
        "Run `attacker query --url U [--api-key K]` or:\n```bash\n.venv/bin/scenarios run x \\\n"
        '    --quick  # a comment --not-an-option\nmake demo ARGS="--budget 5"\n```\n'
    )
    assert commands(text) == [("scenarios", "run x --quick"), ("make demo", 'ARGS="--budget 5"'),
                              ("attacker", "query --url U --api-key K")]  # fmt: skip


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # runpy: the module imported before
@pytest.mark.parametrize("doc", DOCS)
def test_every_option_in_the_readme_is_one_its_command_takes(doc, monkeypatch):
    found = commands((ROOT / doc).read_text())
    assert len(found) > (30 if doc == "README.md" else 0), found
    unknown = []
    for program, arguments in found:
        if program.startswith("make "):
            target = program.removeprefix("make ")
            args = re.search(r'ARGS="([^"]*)"', arguments)
            if args is None:
                continue
            assert target in MAKE, f"make {target} takes ARGS: add where it passes them to MAKE"
            program, before = MAKE[target]
            arguments = f"{before} {args[1]}"
        words = arguments.split()
        program = program.removeprefix("python -m ") if program in (
            "python -m scenarios", "python -m attacker") else program  # fmt: skip
        if program in APPS:
            name, options = typer_options(program, words)
        else:
            name, options = program, help_options(program.removeprefix("python -m "), monkeypatch)
        unknown += [f"{name}: {w.split('=')[0]}" for w in words
                    if w.startswith("--") and w.split("=")[0] not in options]  # fmt: skip
    assert not unknown, f"{doc} names options its commands do not take: {unknown}"


def test_every_variable_in_the_readme_is_read_somewhere():
    """VICTIM_* and TESTBED_* are pydantic settings (each defense's from its own model);
    ATTACKER_* are read by the attacker's CLI or passed by the compose files."""
    from defense.registry import defenses
    from shared.paths import DataSettings
    from victim_service.settings import VictimSettings

    known = {f"VICTIM_{name.upper()}" for name in VictimSettings.model_fields}
    known |= {f"TESTBED_{name.upper()}" for name in DataSettings.model_fields}
    known |= {d.env_name(name) for d in defenses() for name in d.settings.model_fields}
    code = [p.read_text() for p in (ROOT / "attacker").rglob("*.py")]
    code += [p.read_text() for p in ROOT.glob("docker-compose*.yml")]
    for doc in DOCS:
        named = set(
            re.findall(r"\b((?:VICTIM|TESTBED|ATTACKER)_[A-Z0-9_]+)", (ROOT / doc).read_text())
        )
        unread = {v for v in named - known if not any(v in text for text in code)}
        assert not unread, f"{doc} names variables nothing reads: {sorted(unread)}"


def test_the_cli_reference_is_what_the_commands_say(tmp_path):
    """docs/cli.md is regenerated from the four commands' --help and must match, so an option
    added, renamed or re-documented without `make cli-docs` fails here; a stale copy is caught."""
    import shutil
    import subprocess

    script = ROOT / "scripts" / "cli_docs.py"
    done = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the check can fail: a copy of the tree whose reference lost a line is reported stale
    copy = tmp_path / "tree"
    (copy / "docs").mkdir(parents=True)
    (copy / "scripts").mkdir()
    shutil.copy(script, copy / "scripts")
    shutil.copy(ROOT / "pyproject.toml", copy)  # the commands it documents
    stale = (ROOT / "docs" / "cli.md").read_text().replace("* `--budget <int>`", "* `--b <int>`")
    (copy / "docs" / "cli.md").write_text(stale)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, copy / "scripts" / "cli_docs.py", "--check"],
                          capture_output=True, text=True, cwd=copy, env=env)  # fmt: skip
    assert done.returncode == 1 and "docs/cli.md is stale: run `make cli-docs`" in done.stderr


def test_no_help_text_is_eaten_as_rich_markup():
    """Typer renders help as rich markup, where `[default: recipe]` is a style tag and vanishes:
    `victim-service train --help` once showed --epochs with no help at all. Every command's and
    option's help must come out as written."""
    from rich.text import Text

    eaten = []
    for program, module in APPS.items():
        todo = [(program, typer.main.get_command(importlib.import_module(module).app))]
        while todo:
            path, command = todo.pop()
            todo += [(f"{path} {n}", c) for n, c in getattr(command, "commands", {}).items()]
            texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
            eaten += [f"{path}: {t!r}" for t in texts if Text.from_markup(t).plain != t]
    assert not eaten, f"help that rich markup would change: {eaten}"
    assert Text.from_markup("steps [default: 1000]").plain == "steps "  # what it guards against
