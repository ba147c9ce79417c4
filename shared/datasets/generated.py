"""Datasets made on the fly, offline: the digits and the seeded `natural` and `noise` pools."""

from __future__ import annotations

import functools
import importlib.util
import math
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from shared.datasets.base import ArrayDataset, ImageDataset
from shared.datasets.registry import register
from shared.datasets.slots import SlotFile, slot_key
from shared.imaging import arrays_digest, resize, to_rgb
from shared.paths import data_settings


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
    return photos | _sklearn_sample_photos()


def _sklearn_sample_photos() -> dict[str, np.ndarray]:
    """scikit-learn's sample photographs (china, flower), read from its package folder as
    `load_sample_images` reads them, without importing scikit-learn: that import (SciPy
    with it) took 5 s of every `attacker query --pool natural`, which needs nothing else."""
    spec = importlib.util.find_spec("sklearn")
    folder = Path(spec.origin).parent / "datasets" / "images" if spec and spec.origin else None
    if folder is None or not folder.is_dir():  # laid out otherwise: ask scikit-learn
        from sklearn.datasets import load_sample_images

        samples = load_sample_images()
        files = [Path(f) for f in samples.filenames]
        return {f.stem: to_rgb(image) for f, image in zip(files, samples.images, strict=True)}
    photos = {}
    for file in sorted(folder.glob("*.jpg")):
        with Image.open(file) as image:
            photos[file.stem] = to_rgb(np.asarray(image))
    return photos


class ImageCache:
    """The most recently made images, up to `max_bytes`, shared by threads and read-only.

    A process that queries a seeded pool then reads the same images back (the transfer set for
    each budget it trains at, checked against what was sent): the budget experiment's quick run
    made 17,600 natural images of 5,029 distinct ones, 51 s of its 111 s."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._images: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
                return image
        image = make()  # outside the lock: threads make different images at once
        image.setflags(write=False)
        with self._lock:
            if key not in self._images:
                self._images[key] = image
                self._bytes += image.nbytes
                while self._bytes > self.max_bytes:
                    self._bytes -= self._images.popitem(last=False)[1].nbytes
        return image

    def __len__(self) -> int:
        return len(self._images)

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self._bytes = 0


NATURAL_CACHE = ImageCache(max_bytes=128 * 2**20)
"""The `natural` pools' images in this process: 10,900 images at 64 px, 43,600 at 32 px."""


@dataclass
class NaturalPool(ImageDataset):
    """Seeded random crops, scales, flips and colour changes of the bundled photographs.

    Image `i` depends only on (seed, i), so any index can be regenerated later. The label of an
    image is the photograph it was cut from: the pool's own (attacker-known) classes. Images are
    read-only; with a `cache` they are made once per process while they stay in it, and with
    `slots` once on this machine.
    """

    seed: int = 0
    side: int = 64
    photos: list[np.ndarray] = field(default_factory=list)
    cache: ImageCache | None = field(default=None, repr=False, compare=False)
    """Keyed by (seed, side, photograph, index): only pools of the same photographs may share
    one (`natural()` gives its pools, all of the bundled photographs, `NATURAL_CACHE`)."""
    slots: SlotFile | None = field(default=None, repr=False, compare=False)
    """The images made by earlier processes, on disk (`natural_slots`), each under the key of
    its (seed, side, photograph); like `cache`, shared only by pools of the same photographs."""

    def _load(self, index: int) -> np.ndarray:
        if self.cache is None:
            return self._kept(index)
        key = (self.seed, self.side, int(self.targets[index]), index)
        return self.cache.get(key, lambda: self._kept(index))

    def _kept(self, index: int) -> np.ndarray:
        if self.slots is None:
            return self._make(index)
        key = slot_key(self.seed, self.side, int(self.targets[index]))
        image = self.slots.get(index, key)
        if image is None:
            image = self._make(index)
            self.slots.put(index, key, image)
        return image

    def _make(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        picture = self._pictures[int(self.targets[index])]
        w, h = picture.size
        area = h * w * rng.uniform(0.005, 0.6)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(8, round(np.sqrt(area / ratio)))))
        cw = int(min(w, max(8, round(np.sqrt(area * ratio)))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = picture.crop((left, top, left + cw, top + ch))
        image = image.resize((self.side, self.side), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if rng.random() < 0.25:
            image = image.rotate(float(rng.uniform(-30, 30)), Image.Resampling.BILINEAR)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
        image = _contrast(image, rng.uniform(0.6, 1.8))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.0, 1.6))
        if rng.random() < 0.2:
            image = ImageOps.grayscale(image).convert("RGB")
        if rng.random() < 0.1:
            image = ImageOps.invert(image)
        if rng.random() < 0.1:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
        return np.asarray(image, dtype=np.uint8)

    @functools.cached_property
    def _pictures(self) -> list[Image.Image]:
        """The photographs as Pillow images, made once: cropping one is a copy of the crop's
        rows, where `Image.fromarray` of a numpy crop packed every crop again (same pixels)."""
        return [Image.fromarray(photo) for photo in self.photos]


def _contrast(image: Image.Image, factor: float) -> Image.Image:
    """`ImageEnhance.Contrast(image).enhance(factor)` for an RGB image, the same pixels: a blend
    with the grey image of its rounded mean luminance, read off the histogram as an exact
    integer sum (Pillow's, through `ImageStat`, took 1.6 times as long: a tenth of the pool's
    synthesis; `map(mul)` 0.6 times as long as a generator over `enumerate`)."""
    total = sum(map(operator.mul, image.convert("L").histogram(), range(256)))
    mean = total / (image.width * image.height)
    grey = Image.new("RGB", image.size, (int(mean + 0.5),) * 3)
    return Image.blend(grey, image, factor)


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
    side = image_size or 64
    return NaturalPool(
        name="natural",
        classes=list(photos),
        targets=targets,
        seed=split_seed,
        side=side,
        photos=list(photos.values()),
        cache=NATURAL_CACHE,
        slots=natural_slots(split_seed, side) if data_settings().keep_pools else None,
    )


SYNTHESIS_REVISION = 1
"""Names the `natural` pools' files on disk: a change to `NaturalPool._make` that gives other
pixels bumps it, and the files of the older code are left unused (Pillow's version is named too:
another Pillow may resize otherwise)."""


def natural_slots(seed: int, side: int) -> SlotFile:
    """The file that keeps the `natural` pool of `seed` at `side` px: one per seed and side,
    whatever the pool's size, since image `i` depends on (seed, i) and its photograph alone."""
    import PIL

    name = (
        f"natural-{_photos_digest()}-s{seed}-{side}px-pillow{PIL.__version__}"
        f"-r{SYNTHESIS_REVISION}.slots"
    )
    return SlotFile(data_settings().cache_dir / "pools" / name, (side, side, 3))


@functools.cache
def _photos_digest() -> str:
    return arrays_digest(list(bundled_photos().values()))


@dataclass
class NoisePool(ImageDataset):
    """Uniformly random pixels, image `i` seeded by (seed, i): Copycat's negative control."""

    seed: int = 0
    side: int = 32

    def _load(self, index: int) -> np.ndarray:
        return noise_pixels([self.seed, index, 7], (self.side, self.side, 3))


def noise_pixels(seed: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """`np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)`, at half its CPU.

    Over the whole byte range numpy's `integers` takes each 32-bit draw's four bytes, low
    first, and PCG64's 32-bit draws are the halves of its 64-bit outputs, low first: the bytes
    of its raw 64-bit words, little-endian (`tests/test_datasets.py` checks the two agree). The
    pool's pixels, and every result made from them, stay as they were.
    """
    n = math.prod(shape)
    words = np.random.PCG64(np.random.SeedSequence(seed)).random_raw(-(-n // 8))
    return words.astype("<u8", copy=False).view(np.uint8)[:n].reshape(shape)


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
