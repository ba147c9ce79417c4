"""Artefacts cached by a hash of the configuration that made them (victims, transfer sets,
knockoffs): rerunning an experiment, or another that shares a step, reuses what exists."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CACHE_ROOT = Path("runs/cache")


def config_hash(config: dict) -> str:
    """A short, stable hash of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_path(kind: str, config: dict, suffix: str, root: Path = CACHE_ROOT) -> Path:
    """Where the artefact of `kind` for `config` lives; its config is written beside it."""
    key = config_hash(config)
    path = root / kind / f"{key}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = path.with_name(f"{key}.json")
    if not meta.exists():
        meta.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return path.resolve()
