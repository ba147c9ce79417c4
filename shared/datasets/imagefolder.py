"""A user's own ImageFolder tree (one folder per class), read with torchvision's ImageFolder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.datasets.base import FileDataset
from shared.errors import MissingDataError


def imagefolder(root: str | Path, cache_key: str | None = None, name: str | None = None):
    """Any ImageFolder tree (one folder per class), read with torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingDataError(f"image folder {root} does not exist")
    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise MissingDataError(f"{root} is not an ImageFolder tree: {exc}") from None
    return FileDataset(
        name=name or f"imagefolder:{root}",
        classes=list(folder.classes),
        targets=np.asarray(folder.targets, dtype=np.int64),
        paths=[path for path, _ in folder.samples],
        cache_key=cache_key,
    )
