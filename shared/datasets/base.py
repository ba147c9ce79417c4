"""The dataset classes: images by index, labels, class names, and a reloadable reference.

A dataset is indexable: `dataset.image(i)` is an (H, W, 3) uint8 array, `dataset.targets[i]` its
label, `dataset.reference(i)` a string from which the same image can be reloaded later (the
attacker stores it in the transfer set). `dataset.arrays(size)` returns every image resized to
`size` in one uint8 array, cached on disk for the large file-backed datasets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from shared.errors import TestbedError
from shared.imaging import resize
from shared.paths import data_settings

SPLITS = ("train", "test")


@dataclass
class ImageDataset:
    """Base class: subclasses provide `_load(i)`; labels and class names live here."""

    name: str
    classes: list[str]
    targets: np.ndarray
    flip_invariant: bool = True
    """Whether a horizontal flip keeps the label (True for photos, False for digits)."""
    class_groups: dict[str, list[int]] = field(default_factory=dict)
    """An optional coarser level above the classes (a label hierarchy for the adaptive attack)."""
    split_note: str | None = None
    """Where this split came from, when the user should be told (a held-out part of a tree)."""

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range 0..{len(self) - 1}")
        return self._load(index)

    def _load(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def reference(self, index: int) -> str:
        return f"{self.name}#{index}"

    def arrays(self, size: int, indices: Sequence[int] | None = None) -> np.ndarray:
        """Images resized to (size, size, 3), stacked: shape (n, size, size, 3), uint8."""
        idx = range(len(self)) if indices is None else indices
        out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
        for row, i in enumerate(idx):
            out[row] = resize(self.image(int(i)), size)
        return out


@dataclass
class ArrayDataset(ImageDataset):
    """Images held in memory as one uint8 array (N, H, W, 3)."""

    images: np.ndarray = field(default_factory=lambda: np.empty((0, 1, 1, 3), np.uint8))

    def _load(self, index: int) -> np.ndarray:
        return self.images[index]

    def arrays(self, size: int, indices: Sequence[int] | None = None) -> np.ndarray:
        images = self.images if indices is None else self.images[np.asarray(indices, dtype=int)]
        if images.shape[1] == size and images.shape[2] == size:
            return images.copy()
        return super().arrays(size, indices)


@dataclass
class FileDataset(ImageDataset):
    """Images read from files (an ImageFolder tree); `reference` is the file path."""

    paths: list[str] = field(default_factory=list)
    cache_key: str | None = None

    def _load(self, index: int) -> np.ndarray:
        try:
            with Image.open(self.paths[index]) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, not one
            raise TestbedError(
                f"{self.paths[index]} is not a readable image ({type(exc).__name__}); mend or "
                "remove it"
            ) from None

    def reference(self, index: int) -> str:
        return self.paths[index]

    def arrays(self, size: int, indices: Sequence[int] | None = None) -> np.ndarray:
        if self.cache_key is None or indices is not None:
            return super().arrays(size, indices)
        cache = data_settings().cache_dir / "arrays" / f"{self.cache_key}-{size}.npy"
        if cache.exists():
            return np.load(cache)
        out = super().arrays(size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache)
        return out
