"""One registry of image datasets by name, each giving images, labels and class names.

`from shared.datasets import load_dataset, ImageDataset, ...` is the public way in; the modules:
`base` (the dataset classes), `registry` (names -> factories, `load_dataset`), `generated`
(digits, natural, noise), `imagefolder` (a user's own tree), `archives` (cifar10-jpeg,
tiny-imagenet-*), `torchvision_sets` (torchvision's datasets).
"""

from shared.datasets import archives, generated, torchvision_sets  # noqa: F401  (registration)
from shared.datasets.archives import data_version, extracted_archive
from shared.datasets.base import SPLITS, ArrayDataset, FileDataset, ImageDataset
from shared.datasets.generated import NaturalPool, NoisePool, bundled_photos
from shared.datasets.imagefolder import NO_FLIP_MARKER, imagefolder, read_tree
from shared.datasets.registry import (
    DatasetFactory,
    check_dataset,
    dataset_names,
    load_dataset,
    register,
)

__all__ = [
    "NO_FLIP_MARKER",
    "SPLITS",
    "ArrayDataset",
    "DatasetFactory",
    "FileDataset",
    "ImageDataset",
    "NaturalPool",
    "NoisePool",
    "bundled_photos",
    "check_dataset",
    "data_version",
    "dataset_names",
    "extracted_archive",
    "imagefolder",
    "load_dataset",
    "read_tree",
    "register",
]
