"""Artefacts cached by a hash of the configuration that made them (victims, transfer sets,
knockoffs): rerunning an experiment, or another that shares a step, reuses what exists.

The root is `TESTBED_EXPERIMENTS_CACHE_DIR` (default runs/cache under the working folder), so
several checkouts can share one folder; a lock per artefact keeps two processes from making
the same one at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from shared.paths import data_settings


def cache_root() -> Path:
    """The experiments' cache folder, from the settings (read at call time, not import)."""
    return data_settings().experiments_cache_dir


def config_hash(config: dict) -> str:
    """A short, stable hash of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_path(kind: str, config: dict, suffix: str, root: Path | None = None) -> Path:
    """Where the artefact of `kind` for `config` lives; its config is written beside it."""
    key = config_hash(config)
    path = (root or cache_root()) / kind / f"{key}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = path.with_name(f"{key}.json")
    if not meta.exists():
        meta.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return path.resolve()


@contextmanager
def making(path: Path) -> Iterator[None]:
    """Hold the artefact's lock while it is checked and made (another process waits)."""
    with FileLock(str(path) + ".lock"):
        yield
