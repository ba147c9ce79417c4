"""torchvision's datasets (cifar10, mnist, svhn, ...): from the cache, downloaded on request."""

from __future__ import annotations

import numpy as np

from shared.datasets.base import ArrayDataset
from shared.datasets.registry import DatasetFactory, register
from shared.errors import MissingDataError
from shared.imaging import resize
from shared.paths import data_settings


def _torchvision(cls_name: str, split_arg: str) -> DatasetFactory:
    def factory(split: str = "train", **_: object) -> ArrayDataset:
        import torchvision.datasets as tvd

        settings = data_settings()
        root = settings.cache_dir / "torchvision"
        cls = getattr(tvd, cls_name)
        kwargs = {"train": split == "train"} if split_arg == "train" else {"split": split}
        try:
            ds = cls(str(root), download=settings.download, **kwargs)
        except RuntimeError as exc:
            raise MissingDataError(
                f"torchvision dataset {cls_name} is not in {root} ({exc}). It needs the "
                f"internet once: set TESTBED_DOWNLOAD=1 (or pass --download) to fetch it."
            ) from None
        return _torchvision_to_arrays(ds, cls_name)

    return factory


def _torchvision_to_arrays(ds, name: str) -> ArrayDataset:
    data = getattr(ds, "data", None)
    if data is not None:
        images = np.asarray(data)
        if images.ndim == 4 and images.shape[1] in (1, 3):  # SVHN stores (N, C, H, W)
            images = images.transpose(0, 2, 3, 1)
        if images.ndim == 3 or images.shape[-1] == 1:
            images = np.repeat(images.reshape(*images.shape[:3], 1), 3, axis=3)
        labels = getattr(ds, "targets", None)
        targets = np.asarray(labels if labels is not None else ds.labels)
    else:
        pairs = [(np.asarray(img.convert("RGB")), t) for img, t in ds]
        side = max(p[0].shape[0] for p in pairs)
        images = np.stack([resize(p[0], side) for p in pairs])
        targets = np.asarray([p[1] for p in pairs])
    classes = list(getattr(ds, "classes", [])) or [str(c) for c in sorted(set(targets.tolist()))]
    return ArrayDataset(
        name=name.lower(),
        classes=[str(c) for c in classes],
        targets=targets.astype(np.int64),
        images=np.ascontiguousarray(images.astype(np.uint8)),
        flip_invariant=name not in ("MNIST", "FashionMNIST", "SVHN", "GTSRB"),
    )


for _name, _cls, _arg in [
    ("cifar10", "CIFAR10", "train"),
    ("cifar100", "CIFAR100", "train"),
    ("mnist", "MNIST", "train"),
    ("fashion-mnist", "FashionMNIST", "train"),
    ("svhn", "SVHN", "split"),
    ("gtsrb", "GTSRB", "split"),
    ("stl10", "STL10", "split"),
]:
    register(_name)(_torchvision(_cls, _arg))
