"""Artefacts cached by a hash of the configuration that made them (victims, transfer sets,
knockoffs): rerunning an experiment, or another that shares a step, reuses what exists.

The root is `TESTBED_EXPERIMENTS_CACHE_DIR` (default runs/cache under the working folder), so
several checkouts can share one folder; a lock per artefact keeps two processes from making
the same one at once.

A configuration does not name the code that makes its artefact, so each kind carries a revision
in its key: a change that makes another artefact from the same configuration (another victim,
other answers, another knockoff, filter or detection) bumps its kind's revision here, and the
caches of older code are then left unused instead of passing for the new code's. The data
is named the same way: a configuration that names a dataset read from an archive is keyed by
that archive's stamp as well (`shared.datasets.data_version`), so a replaced archive makes its
artefacts again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from shared.datasets import data_version
from shared.paths import data_settings


def cache_root() -> Path:
    """The experiments' cache folder, from the settings (read at call time, not import)."""
    return data_settings().experiments_cache_dir


def config_hash(config: dict) -> str:
    """A short, stable hash of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


REVISIONS: dict[str, int] = {
    "victims": 1,
    "transfer": 1,
    "knockoffs": 1,
    "ood-filters": 1,
    "ood-detection": 1,
    "benign": 1,
    "prada": 1,
    "pools": 1,
}
"""Revision 1 of every kind since 2026-12-07, when revisions entered the keys: artefacts cached
before then are not reused. They had been: `query-distribution --quick` answered from a cache
made before JBDA's substitutes learned every label (dc821fa) with the old code's JBDA rows."""


def _revised(kind: str, config: dict) -> dict:
    if kind not in REVISIONS:
        raise KeyError(f"{kind!r} has no revision in scenarios.experiments.cache.REVISIONS")
    versions = {name: v for name in sorted(_strings(config)) if (v := data_version(name))}
    return {**config, "revision": REVISIONS[kind]} | ({"data": versions} if versions else {})


def _strings(value: object) -> set[str]:
    """Every string among a configuration's values, at any depth (the datasets it names)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*map(_strings, value.values()))
    if isinstance(value, list | tuple):
        return set().union(*map(_strings, value))
    return set()


def artefact_key(kind: str, config: dict) -> str:
    """The key of the artefact of `kind` for `config` at its kind's revision: what an artefact
    made from it names it by, so that revising the one makes the other again too."""
    return config_hash(_revised(kind, config))


def cached_path(kind: str, config: dict, suffix: str, root: Path | None = None) -> Path:
    """Where the artefact of `kind` for `config` (at its kind's revision) lives; both are
    written beside it."""
    config = _revised(kind, config)
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
