"""Helpers shared by the three command-line tools: clean errors instead of tracebacks."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from shared.errors import TestbedError

F = TypeVar("F", bound=Callable)

DEVICE_HELP = "auto (CUDA when present, else CPU), cpu or cuda"
"""Every command's --device takes the same words (`shared.device.resolve_device`)."""


def positive_integers(text: str, option: str) -> tuple[int, ...]:
    """`--budgets 500,1000`: comma-separated positive integers, or a one-line TestbedError."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise TestbedError(f"{option}: expected comma-separated positive integers, got {text!r}")
    return values


def friendly(func: F) -> F:
    """Print a TestbedError's message in one line and exit 2, never a traceback; so too an
    OSError naming a file (`--json /no/such/folder/x.json`, a full disk, a read-only folder)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TestbedError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            sys.exit(2)
        except OSError as exc:
            if exc.filename is None:
                raise  # not about a path the user gave: a bug, keep its traceback
            typer.secho(f"error: {exc.filename}: {exc.strerror}", fg=typer.colors.RED, err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
