"""Errors with a message meant for the person at the terminal, not a traceback."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class TestbedError(Exception):
    """Base class: the CLI prints the message and exits non-zero."""

    __test__ = False  # not a pytest test class, despite the name


class UnknownNameError(TestbedError, KeyError):
    """An unknown dataset, architecture or strategy name."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")

    def __str__(self) -> str:
        return self.args[0]


class MissingDataError(TestbedError, FileNotFoundError):
    """A dataset archive or folder that is not where it should be."""


def check_choice(value: str, choices: Sequence[str], name: str) -> None:
    """Refuse a value outside `choices` in one line, naming the setting as its caller knows it
    (`demo: --strategy`, `keep`)."""
    if value not in choices:
        raise TestbedError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def validation_problems(exc: ValidationError, env_name: Callable[[str], str]) -> str:
    """pydantic's problems in one line, each as `ENV_NAME='value': why`, the variable named as
    the user set it; a rule across fields by its own message (which names them)."""
    problems = []
    for error in exc.errors():
        why = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            problems.append(f"{env_name(str(error['loc'][0]))}={error['input']!r}: {why}")
        else:
            problems.append(why)
    return "; ".join(problems)
