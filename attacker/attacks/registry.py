"""The registry of attacks by name; parameters are validated here, in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from attacker.attacks.base import Attack
from shared.errors import TestbedError, UnknownNameError

ATTACKS: dict[str, type[Attack]] = {}


def register(name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: make an attack available by `name`."""

    def deco(cls: type[Attack]) -> type[Attack]:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is registered twice")
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return deco


def attack_names() -> list[str]:
    return sorted(ATTACKS)


def make_attack(name: str, params: Mapping[str, Any] | None = None) -> Attack:
    """The attack `name` with validated parameters; a bad one is one clear line."""
    cls = ATTACKS.get(name)
    if cls is None:
        raise UnknownNameError("attack", name, attack_names())
    try:
        validated = cls.Params.model_validate(dict(params or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise TestbedError(f"attack {name}: {problems}") from None
    return cls(validated)
