"""Defenses by name: a defense is one file that registers its settings and its step here.

Each defense module under `defense/defenses/` (found and imported automatically) declares a
pydantic settings model and decorates its step builder with `@register_defense(name, ...)`.
The registry then gives everyone the same view:

- settings: the model is read from the environment with the prefix `VICTIM_<NAME>_`, so field
  `beta` of `reverse_sigmoid` is `VICTIM_REVERSE_SIGMOID_BETA` (today's variable names);
- switch: the defense is on when its `switch` field is set (not None);
- place: `order` puts detectors (they see the model's own answer) before perturbations;
- sweep: the settings that switch it on at its default strength, for the utility evaluator.

The service settings, `build_steps`, the utility evaluator and the CLI only iterate this
registry (the way ART's postprocessors are composed), so adding a defense edits no other file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.checkpoint import ModelCard
from shared.errors import TestbedError, UnknownNameError, validation_problems
from shared.models import Classifier
from shared.pipeline import Step

ENV_PREFIX = "VICTIM_"


class DefenseSettings(BaseSettings):
    """Base of every defense's settings; the registry reads them with the defense's prefix."""

    model_config = SettingsConfigDict(env_file=None, extra="forbid", frozen=True)

    sweeps: ClassVar[tuple[dict[str, Any], ...]] = ()
    """Settings that switch the defense on at its default strength (one evaluator row each)."""


@dataclass(frozen=True)
class BuildContext:
    """What a step builder may use: the served model, its card, the device and shared seeds."""

    model: Classifier
    card: ModelCard
    device: torch.device
    amp: bool = False
    seed: int = 0
    trace: bool = False
    """Serve a step's own network as a TorchScript trace on a CPU (`VICTIM_TRACE`)."""


Builder = Callable[[Any, BuildContext], Step]


@dataclass(frozen=True)
class Defense:
    """One registered defense: its name, settings model, switch field, place and builder."""

    name: str
    settings: type[DefenseSettings]
    switch: str
    order: int
    build: Builder = field(repr=False)

    @property
    def env_prefix(self) -> str:
        return f"{ENV_PREFIX}{self.name.upper()}_"

    def env_name(self, field_name: str) -> str:
        return f"{self.env_prefix}{field_name.upper()}"

    def read(self, values: Mapping[str, Any] | None = None, env: bool = True) -> DefenseSettings:
        """Its settings from `values` (these win) and, with `env`, the environment.

        Bad values raise a `TestbedError` in one line, naming each as the user wrote it: the
        variable (`VICTIM_NOISE_STD`) when read with the environment, else `noise.std`, as
        `--set` takes it.
        """
        try:
            if not env:
                return self.settings.model_validate(dict(values or {}))
            return self.settings(_env_prefix=self.env_prefix, **dict(values or {}))
        except ValidationError as exc:
            named = self.env_name if env else lambda field_name: f"{self.name}.{field_name}"
            problems = validation_problems(exc, named)
            raise TestbedError(f"defense {self.name!r}: {problems}") from None

    def enabled(self, settings: DefenseSettings) -> bool:
        return getattr(settings, self.switch) is not None


_REGISTRY: dict[str, Defense] = {}
_builtins_loaded = False


def register_defense(
    name: str, *, settings: type[DefenseSettings], switch: str, order: int
) -> Callable[[Builder], Builder]:
    """Decorator for a step builder `build(settings, ctx) -> Step`: registers the defense."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"defense name {name!r} must be a lower-case identifier")
    if switch not in settings.model_fields:
        raise ValueError(f"defense {name!r}: switch {switch!r} is not a field of its settings")

    def decorate(build: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"defense {name!r} is registered twice")
        _REGISTRY[name] = Defense(name, settings, switch, order, build)
        return build

    return decorate


def unregister_defense(name: str) -> None:
    """Remove a defense (tests register toys and take them away again)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    """Import every module of `defense.defenses`: each registers itself on import."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    package = importlib.import_module("defense.defenses")
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)


def defenses() -> list[Defense]:
    """All registered defenses, in pipeline order (then by name)."""
    _load_builtins()
    return sorted(_REGISTRY.values(), key=lambda d: (d.order, d.name))


def get_defense(name: str) -> Defense:
    _load_builtins()
    if name not in _REGISTRY:
        raise UnknownNameError("defense", name, list(_REGISTRY))
    return _REGISTRY[name]


def split_flat(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Flat keyword names (`prada_threshold=0.9`) -> (the rest, {defense: {field: value}})."""
    rest: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    known = sorted(defenses(), key=lambda d: -len(d.name))  # longest prefix first
    for key, value in values.items():
        for d in known:
            prefix = d.name + "_"
            if key.startswith(prefix) and key[len(prefix) :] in d.settings.model_fields:
                nested.setdefault(d.name, {})[key[len(prefix) :]] = value
                break
        else:
            rest[key] = value
    return rest, nested


def read_all(
    values: Mapping[str, Mapping[str, Any]] | None = None, env: bool = True
) -> dict[str, DefenseSettings]:
    """Every registered defense's settings: explicit `values` first, then `VICTIM_<NAME>_*`."""
    values = values or {}
    for name in values:
        get_defense(name)  # unknown names are an error, not silently ignored
    return {d.name: d.read(values.get(d.name), env=env) for d in defenses()}


def enabled(settings: Mapping[str, DefenseSettings]) -> Iterator[tuple[Defense, DefenseSettings]]:
    """The switched-on defenses among `settings`, in pipeline order."""
    for d in defenses():
        if d.name in settings and d.enabled(settings[d.name]):
            yield d, settings[d.name]


def build_steps(settings: Mapping[str, DefenseSettings], ctx: BuildContext) -> list[Step]:
    """The steps of the switched-on defenses, in pipeline order (the same in service and tools)."""
    return [d.build(s, ctx) for d, s in enabled(settings)]
