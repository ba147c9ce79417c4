"""One registry of image datasets by name; `load_dataset` is the only way in."""

from __future__ import annotations

from collections.abc import Callable

from shared.datasets.base import SPLITS, ImageDataset
from shared.errors import TestbedError, UnknownNameError

DatasetFactory = Callable[..., ImageDataset]
_REGISTRY: dict[str, DatasetFactory] = {}


def register(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    def deco(factory: DatasetFactory) -> DatasetFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def dataset_names() -> list[str]:
    return sorted(_REGISTRY) + ["imagefolder:<path>"]


def check_dataset(name: str) -> None:
    """Refuse an unknown dataset by name, or a user's tree that is not there, without loading
    anything: commands that train or query for minutes before they read a dataset check first."""
    if name.startswith("imagefolder:"):
        from shared.datasets.imagefolder import existing_tree

        existing_tree(name.removeprefix("imagefolder:"))
    elif name not in _REGISTRY:
        raise UnknownNameError("dataset", name, dataset_names())


def load_dataset(
    name: str,
    split: str = "train",
    *,
    size: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load a dataset by registry name.

    `size` is the number of images for generated pools (`natural`, `noise`); `image_size` their
    side in pixels (and the upscaled side of `digits`). File-backed datasets keep their own size.
    """
    if split not in SPLITS:
        raise TestbedError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if name.startswith("imagefolder:"):
        from shared.datasets.imagefolder import imagefolder

        return imagefolder(name.removeprefix("imagefolder:"), split)
    check_dataset(name)
    return _REGISTRY[name](split=split, size=size, image_size=image_size, seed=seed)
