"""`--set field=value` on an experiment's configuration: a budget curve over other budgets or
seeds, a knockoff trained for other epochs (`knockoff.epochs=10`), without editing code.

A value is read by the type of the field's current value: an int, a float, a boolean, a
string, or a comma-separated tuple of those; `none` clears a field that may be empty, and a
field that is empty now takes an int, a float or else a string. The results record the whole
configuration, so a run with overrides says what it ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any

from attacker.strategies import STRATEGIES
from attacker.train import check_keep
from shared.datasets import check_dataset
from shared.errors import TestbedError, check_choice
from shared.models import check_arch

TRUE, FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def _scalar(text: str, like: object, name: str) -> object:
    text = text.strip()
    try:
        if isinstance(like, bool):
            if text.lower() not in TRUE | FALSE:
                raise ValueError
            return text.lower() in TRUE
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
    except ValueError:
        kind = (
            "true or false" if isinstance(like, bool)
            else "an integer" if isinstance(like, int) else "a number"
        )  # fmt: skip
        raise TestbedError(f"--set {name}: {text!r} is not {kind}") from None
    if like is None:
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return text


def _value(text: str, current: object, name: str) -> object:
    if text.strip().lower() == "none":
        return None
    if isinstance(current, tuple):
        if any(isinstance(item, (tuple, list, dict)) or is_dataclass(item) for item in current):
            raise TestbedError(f"--set {name}: a nested field, not settable from the command line")
        like = current[0] if current else ""
        values = tuple(_scalar(part, like, name) for part in text.split(",") if part.strip())
        if not values:
            raise TestbedError(f"--set {name}: no value given (comma-separated, e.g. 1,2)")
        return values
    if is_dataclass(current) or isinstance(current, (dict, list)):
        raise TestbedError(f"--set {name}: set one of its fields ({name}.<field>=...)")
    return _scalar(text, current, name)


def _set(config: Any, path: list[str], text: str, name: str) -> Any:
    known = [f.name for f in fields(config)]
    if path[0] not in known:
        raise TestbedError(f"--set {name}: no field {path[0]!r}; known: {', '.join(known)}")
    current = getattr(config, path[0])
    if len(path) > 1:
        if not is_dataclass(current):
            raise TestbedError(f"--set {name}: {path[0]!r} has no fields")
        return replace(config, **{path[0]: _set(current, path[1:], text, name)})
    return replace(config, **{path[0]: _value(text, current, name)})


def apply_overrides(
    config: Any, assignments: Sequence[str], set_elsewhere: Mapping[str, str] | None = None
) -> Any:
    """`config` (a frozen dataclass) with each `field=value` (dotted for nested) applied;
    a field in `set_elsewhere` (which the experiment overwrites) is refused with its reason."""
    refused = set_elsewhere or {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise TestbedError(f"--set takes field=value, got {assignment!r}")
        if name in refused:
            raise TestbedError(f"--set {name}: the experiment sets it itself and would ignore "
                               f"it; {refused[name]}")  # fmt: skip
        config = _set(config, name.split("."), text, name)
    return config


DATASET_FIELDS = {"dataset", "in_dataset", "out_dataset", "pool", "natural_pool"}
COUNT_FIELDS = {"budget", "budgets", "epochs", "batch_size", "pool_size", "seeds"}
"""Fields that count something (a seed too, as a list): none may be below 1, or 0 for seeds."""


def check_config(config: Any, prefix: str = "") -> None:
    """Every dataset, architecture, strategy and choice of kept weights the configuration names
    exists, and every count is positive, checked before anything runs: `--set pool=nope` used
    to fail after the victim was trained (9 min at the default scale)."""
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            check_config(value, f"{prefix}{f.name}.")
            continue
        values = value if isinstance(value, tuple) else (value,)
        if f.name in COUNT_FIELDS:
            least = 0 if f.name == "seeds" else 1
            for item in (v for v in values if isinstance(v, int) and v < least):
                raise TestbedError(f"{prefix}{f.name}: {item} is below {least}")
        for item in (v for v in values if isinstance(v, str)):
            if f.name in DATASET_FIELDS:
                check_dataset(item)
            elif f.name in ("arch", "archs"):
                check_arch(item)
            elif f.name in ("strategy", "strategies"):
                check_choice(item, STRATEGIES, f.name)
            elif f.name == "keep":
                check_keep(item)
