"""Errors with a message meant for the person at the terminal, not a traceback."""

from __future__ import annotations

from collections.abc import Sequence


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
