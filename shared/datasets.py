"""One registry of image datasets by name, each giving images, labels and class names.

A dataset is indexable: `dataset.image(i)` is an (H, W, 3) uint8 array, `dataset.targets[i]` its
label, `dataset.reference(i)` a string from which the same image can be reloaded later (the
attacker stores it in the transfer set). `dataset.arrays(size)` returns every image resized to
`size` in one uint8 array, cached on disk for the large file-backed datasets.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from shared.errors import MissingDataError, TestbedError, UnknownNameError
from shared.imaging import resize, to_rgb
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
        with Image.open(self.paths[index]) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

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


# --------------------------------------------------------------------------- registry

DatasetFactory = Callable[..., ImageDataset]
_REGISTRY: dict[str, DatasetFactory] = {}


def register(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    def deco(factory: DatasetFactory) -> DatasetFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def dataset_names() -> list[str]:
    return sorted(_REGISTRY) + ["imagefolder:<path>"]


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
        return imagefolder(name.removeprefix("imagefolder:"))
    if name not in _REGISTRY:
        raise UnknownNameError("dataset", name, dataset_names())
    return _REGISTRY[name](split=split, size=size, image_size=image_size, seed=seed)


# --------------------------------------------------------------------------- digits


@register("digits")
def digits(split: str = "train", image_size: int | None = None, **_: object) -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits, upscaled, white strokes on black."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0 * 255).round().astype(np.uint8)
    index = np.arange(len(images))
    train, test = train_test_split(index, test_size=0.25, stratify=bunch.target, random_state=0)
    chosen = train if split == "train" else test
    side = image_size or 32
    upscaled = np.stack([resize(to_rgb(images[i]), side) for i in chosen])
    return ArrayDataset(
        name="digits",
        classes=[str(d) for d in range(10)],
        targets=bunch.target[chosen].astype(np.int64),
        images=upscaled,
        flip_invariant=False,
    )


# --------------------------------------------------------------------------- natural pool


@functools.cache
def bundled_photos() -> dict[str, np.ndarray]:
    """The natural photographs that ship inside scikit-image and scikit-learn (offline)."""
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    names = [
        "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
        "colorwheel", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo",
        "microaneurysms", "moon", "page", "retina", "rocket", "text",
    ]  # fmt: skip
    photos = {}
    for name in names:
        try:
            photos[name] = to_rgb(getattr(sk, name)())
        except Exception:  # a photo that needs a download is simply not part of the pool
            continue
    samples = load_sample_images()
    for filename, image in zip(samples.filenames, samples.images, strict=True):
        photos[Path(filename).stem] = to_rgb(image)
    return photos


@dataclass
class NaturalPool(ImageDataset):
    """Seeded random crops, scales, flips and colour changes of the bundled photographs.

    Image `i` depends only on (seed, i), so any index can be regenerated later. The label of an
    image is the photograph it was cut from: the pool's own (attacker-known) classes.
    """

    seed: int = 0
    side: int = 64
    photos: list[np.ndarray] = field(default_factory=list)

    def _load(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        photo = self.photos[int(self.targets[index])]
        h, w = photo.shape[:2]
        area = h * w * rng.uniform(0.005, 0.6)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(8, round(np.sqrt(area / ratio)))))
        cw = int(min(w, max(8, round(np.sqrt(area * ratio)))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = Image.fromarray(photo[top : top + ch, left : left + cw])
        image = image.resize((self.side, self.side), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if rng.random() < 0.25:
            image = image.rotate(float(rng.uniform(-30, 30)), Image.Resampling.BILINEAR)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.8))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.0, 1.6))
        if rng.random() < 0.2:
            image = ImageOps.grayscale(image).convert("RGB")
        if rng.random() < 0.1:
            image = ImageOps.invert(image)
        if rng.random() < 0.1:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
        return np.asarray(image, dtype=np.uint8)


@register("natural")
def natural(
    split: str = "train",
    size: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    **_: object,
) -> NaturalPool:
    photos = bundled_photos()
    n = size or 10_000
    split_seed = seed * 2 + (0 if split == "train" else 1)
    rng = np.random.default_rng([split_seed, 2**31])
    targets = rng.integers(0, len(photos), size=n).astype(np.int64)
    return NaturalPool(
        name="natural",
        classes=list(photos),
        targets=targets,
        seed=split_seed,
        side=image_size or 64,
        photos=list(photos.values()),
    )


@dataclass
class NoisePool(ImageDataset):
    """Uniformly random pixels, image `i` seeded by (seed, i): Copycat's negative control."""

    seed: int = 0
    side: int = 32

    def _load(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index, 7])
        return rng.integers(0, 256, size=(self.side, self.side, 3), dtype=np.uint8)


@register("noise")
def noise(
    split: str = "train",
    size: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    **_: object,
) -> NoisePool:
    n = size or 10_000
    return NoisePool(
        name="noise",
        classes=["noise"],
        targets=np.zeros(n, dtype=np.int64),
        seed=seed * 2 + (0 if split == "train" else 1),
        side=image_size or 32,
    )


# --------------------------------------------------------------------------- folders & archives


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


def extracted_archive(archive_name: str) -> Path:
    """Unpack `archive_name` from the data folder once into the cache; return the folder."""
    settings = data_settings()
    archive = settings.data_dir / archive_name
    stem = archive_name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".zip")
    target = settings.cache_dir / "extracted" / stem
    if (target / ".complete").exists():
        return target
    if not archive.exists():
        raise MissingDataError(
            f"dataset archive {archive} is missing. Put {archive_name} there, or point "
            f"TESTBED_DATA_DIR at the folder that holds it (see ../shared/data/README.md)."
        )
    from torchvision.datasets.utils import extract_archive

    partial = target.with_name(f"{stem}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    extract_archive(str(archive), str(partial))
    (partial / ".complete").write_text(hashlib.sha256(archive.name.encode()).hexdigest())
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    return target


@register("cifar10-jpeg")
def cifar10_jpeg(split: str = "train", **_: object) -> FileDataset:
    root = extracted_archive("cifar10-jpeg.tar.gz") / "cifar10" / split
    return imagefolder(root, cache_key=f"cifar10-jpeg-{split}", name="cifar10-jpeg")


def _tiny_imagenet(part: str) -> FileDataset:
    root = extracted_archive("tiny-imagenet-subset.tar.gz") / "tiny-imagenet"
    dataset = imagefolder(
        root / part, cache_key=f"tiny-imagenet-{part}", name=f"tiny-imagenet-{part}"
    )
    words = root / "words.txt"
    if words.exists():
        lookup = dict(
            line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line
        )
        dataset.class_groups = _groups_by_head_noun(
            {wnid: lookup.get(wnid, wnid) for wnid in dataset.classes}, dataset.classes
        )
    return dataset


def _groups_by_head_noun(words: dict[str, str], classes: list[str]) -> dict[str, list[int]]:
    """Group WordNet classes by the last word of their first name ("tabby cat" -> "cat").

    Tiny-ImageNet ships words but not WordNet's is-a relation; the head noun is the coarse
    level the attacker can read off their own pool's labels without outside data.
    """
    groups: dict[str, list[int]] = {}
    for index, wnid in enumerate(classes):
        head = words[wnid].split(",")[0].strip().split()[-1].lower()
        groups.setdefault(head, []).append(index)
    return groups


@register("tiny-imagenet-defender")
def tiny_imagenet_defender(**_: object) -> FileDataset:
    return _tiny_imagenet("defender")


@register("tiny-imagenet-attacker")
def tiny_imagenet_attacker(**_: object) -> FileDataset:
    return _tiny_imagenet("attacker")


# --------------------------------------------------------------------------- torchvision


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
