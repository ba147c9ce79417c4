"""The service's whole configuration, from `VICTIM_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from defense.registry import DefenseSettings, read_all, split_flat
from shared.errors import TestbedError, validation_problems
from shared.schemas import OutputMode


class VictimSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VICTIM_", env_file=None, extra="ignore")

    checkpoint: Path = Path("runs/victim.pt")
    model_name: str = Field(
        "victim",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="the model's name on the Open Inference Protocol routes (/v2/models/{name})",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast where the hardware supports it")
    trace: bool = Field(True, description="TorchScript-trace the forward pass on a CPU")

    # output granularity
    output: OutputMode = "probs"
    top_k: int = Field(5, ge=1)
    round_decimals: int | None = Field(None, ge=0, le=12)

    # limits on hostile input
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(4096 * 4096, ge=1)
    max_images: int = Field(64, ge=1)

    # access control
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit: float | None = Field(None, gt=0, description="images per second per client")
    rate_burst: int | None = Field(None, ge=1, description="bucket size in images")
    rate_max_clients: int = Field(10_000, ge=1, description="rate-limit buckets kept (LRU)")
    metrics_max_clients: int = Field(100, ge=0, description="clients labelled in /metrics")

    # micro-batching across concurrent requests
    batch_max_size: int = Field(128, ge=1)
    batch_max_wait_ms: float = Field(2.0, ge=0)
    model_threads: int | None = Field(
        None,
        ge=1,
        description="forward passes run in parallel; None: one per CPU core on a CPU (each with "
        "one intra-op thread), one on a GPU",
    )

    # defenses: one entry per registered defense (defense/defenses/), each read from its own
    # VICTIM_<NAME>_* variables (VICTIM_PRADA_THRESHOLD, VICTIM_REVERSE_SIGMOID_BETA, ...)
    defenses: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict, exclude=True)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _read_defenses(cls, data: Any) -> Any:
        """Each registered defense's settings: keyword arguments (`prada_threshold=0.9` or
        `defenses={"prada": {...}}`) first, then its `VICTIM_<NAME>_*` variables."""
        if not isinstance(data, dict):
            return data
        rest, nested = split_flat(data)
        given = rest.pop("defenses", None) or {}
        for name, value in given.items():
            if isinstance(value, DefenseSettings):
                value = value.model_dump(exclude_unset=True)
            nested[name] = {**dict(value), **nested.get(name, {})}
        try:
            rest["defenses"] = read_all(nested)
        except TestbedError as exc:
            raise ValueError(str(exc)) from None
        return rest

    def defense(self, name: str) -> DefenseSettings:
        """One defense's settings by its registered name."""
        return self.defenses[name]

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _burst_covers_a_request(self) -> VictimSettings:
        if self.rate_limit is not None and self.rate_burst is None:
            self.rate_burst = max(self.max_images, int(self.rate_limit))
        if self.rate_burst is not None and self.rate_burst < self.max_images:
            raise ValueError(
                f"VICTIM_RATE_BURST ({self.rate_burst}) must be at least VICTIM_MAX_IMAGES "
                f"({self.max_images}): a smaller bucket refuses every full-size request"
            )
        return self


def read_settings(**overrides: Any) -> VictimSettings:
    """The settings from `VICTIM_*` and `overrides` (these win); a bad value is one
    `TestbedError` line naming its variable, not pydantic's page."""
    try:
        return VictimSettings(**overrides)
    except ValidationError as exc:
        problems = validation_problems(exc, lambda field: f"VICTIM_{field.upper()}")
        raise TestbedError(f"bad service settings: {problems}") from None
