"""What names the defense side's disk caches: re-encoded images (`defense.ood`), backbone
features (`defense.features`) and trained filters (the OOD benchmark's and the experiments').

A cached file is named by a digest of the very images it was made from
(`shared.imaging.arrays_digest`), so that other images under the same label (a replaced dataset
archive, another selection) are never answered from it, and by REVISION for the code: a change
that makes other encodings, features or filters from the same inputs bumps REVISION, and the
older files are left unused instead of passing for the new code's."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from shared.imaging import arrays_digest
from shared.paths import data_settings

REVISION = 1
"""1 since 2026-12-07, when it entered the names: files cached before are made again."""


def cached_array(
    folder: str, label: str, images: np.ndarray, detail: str, make: Callable[[], np.ndarray]
) -> np.ndarray:
    """`make()`'s array, kept under the cache dir's `folder` as
    `<label>-<images' digest>-<detail>-r<REVISION>.npy` (`detail`: the settings it was made
    with) and read back from there; written whole or not at all."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    name = f"{safe}-{arrays_digest([images])}-{detail}-r{REVISION}.npy"
    path = data_settings().cache_dir / folder / name
    if path.exists():
        return np.load(path)
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out
