"""What an image goes through on its way to the victim: attacker-side transforms and the
defender's random encodings.

A query is built from a source image at its native size (a 64-px Tiny-ImageNet file, a 32-px
CIFAR file): the attacker resizes it to the victim's input side and sends the bytes. An
`ImageTransform` is one way of doing that, named by a spec:

- `none`: resize to the victim's side (the project's one bilinear resize), send PNG: what the
  attacker client does by default;
- `png`: send the source image itself losslessly and let the service resize it;
- `jpeg:<quality>`: resize, then JPEG at that quality;
- `resize:<px>`: resize down to `px`, back up to the victim's side, PNG;
- `blur:<sigma>`: resize, Gaussian blur of that radius, PNG;
- `match-in`: imitate the in-distribution images' own pipeline: the same downscale to the
  victim's side, then JPEG at the in-distribution's own quality (read off its files'
  quantization tables; PNG when the in-distribution is not JPEG).

`payload` gives the bytes sent; `apply` the array the service's model sees (decode, resize).

`random_encoding` is the defender's augmentation: a random resize chain, then JPEG at a random
quality in 30-95 or a lossless copy (sometimes a light blur), so a filter fitted on such images
cannot tell its two sources apart by their resize or compression artefacts. With `match_in`,
an image first goes through the in-distribution's own pipeline (as `match-in` does): the
defender gives its out-of-distribution examples the artefacts its in-distribution files carry
(CIFAR-10 here is 32-px JPEG q75), so those artefacts stop telling the two sources apart.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from shared.errors import TestbedError
from shared.imaging import decode_image, encode_image, resize

TRANSFORM_SPECS = ("none", "png", "jpeg:<quality>", "resize:<px>", "blur:<sigma>", "match-in")
DEFAULT_ATTACK_TRANSFORMS = (
    "none", "png", "jpeg:95", "jpeg:75", "jpeg:50", "resize:16", "resize:24",
    "blur:0.6", "blur:1.0", "match-in",
)  # fmt: skip
JPEG_RANGE = (30, 95)


@dataclass(frozen=True)
class ImageTransform:
    """One attacker-side way of turning a source image into the bytes of a query."""

    spec: str
    kind: str
    value: float = 0.0

    def payload(self, image: np.ndarray, size: int, in_quality: int | None = None) -> bytes:
        """The bytes the attacker sends for `image` (H, W, 3 uint8) to a `size`-px victim."""
        if self.kind == "png":
            return encode_image(image, "png")
        small = resize(image, size)
        if self.kind == "jpeg":
            return encode_image(small, "jpeg", quality=int(self.value))
        if self.kind == "resize":
            small = resize(resize(small, int(self.value)), size)
        elif self.kind == "blur":
            pil = Image.fromarray(small).filter(ImageFilter.GaussianBlur(self.value))
            small = np.asarray(pil, dtype=np.uint8)
        elif self.kind == "match-in" and in_quality is not None:
            return encode_image(small, "jpeg", quality=in_quality)
        return encode_image(small, "png")

    def apply(self, image: np.ndarray, size: int, in_quality: int | None = None) -> np.ndarray:
        """What the service's model sees: the payload decoded and resized to `size`."""
        return resize(decode_image(self.payload(image, size, in_quality)), size)

    def apply_many(
        self, images: np.ndarray | list[np.ndarray], size: int, in_quality: int | None = None
    ) -> np.ndarray:
        out = np.empty((len(images), size, size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            out[i] = self.apply(image, size, in_quality)
        return out


def parse_transform(spec: str) -> ImageTransform:
    """'jpeg:75' -> ImageTransform; a TestbedError (one line) for anything not understood."""
    kind, sep, raw = spec.strip().partition(":")
    usage = f"unknown attack transform {spec!r}; use one of {', '.join(TRANSFORM_SPECS)}"
    if kind in ("none", "png", "match-in"):
        if sep:
            raise TestbedError(usage)
        return ImageTransform(spec, kind)
    if kind not in ("jpeg", "resize", "blur") or not raw:
        raise TestbedError(usage)
    try:
        value = float(raw)
    except ValueError:
        raise TestbedError(usage) from None
    if kind == "jpeg" and not (1 <= value <= 100 and value == int(value)):
        raise TestbedError(f"{spec!r}: JPEG quality must be an integer in 1..100")
    if kind == "resize" and not (value >= 2 and value == int(value)):
        raise TestbedError(f"{spec!r}: resize needs an integer side of at least 2 px")
    if kind == "blur" and not 0 < value <= 10:
        raise TestbedError(f"{spec!r}: blur sigma must be in (0, 10]")
    return ImageTransform(spec, kind, value)


# --------------------------------------------------------------------------- JPEG quality


@functools.cache
def _standard_luma_tables() -> dict[int, tuple[int, ...]]:
    """libjpeg's luminance table at every quality, as Pillow writes it."""
    probe = Image.new("RGB", (8, 8))
    tables = {}
    for q in range(1, 101):
        buffer = io.BytesIO()
        probe.save(buffer, format="JPEG", quality=q)
        with Image.open(io.BytesIO(buffer.getvalue())) as im:
            tables[q] = tuple(im.quantization[0])
    return tables


def jpeg_quality(path_or_bytes: str | Path | bytes) -> int | None:
    """The libjpeg quality a JPEG was saved at (closest standard table); None if not a JPEG."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as im:
        tables = getattr(im, "quantization", None)
        if im.format != "JPEG" or not tables:
            return None
        luma = np.asarray(tables[0], dtype=np.int64)
    best = min(
        _standard_luma_tables().items(),
        key=lambda item: int(np.abs(np.asarray(item[1]) - luma).sum()),
    )
    return best[0]


def dataset_jpeg_quality(paths: list[str], sample: int = 50, seed: int = 0) -> int | None:
    """The most common JPEG quality of a sample of files; None when they are not JPEGs."""
    if not paths:
        return None
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(sample, len(paths)), replace=False)
    qualities = [q for q in (jpeg_quality(paths[int(i)]) for i in chosen) if q is not None]
    if not qualities:
        return None
    values, counts = np.unique(qualities, return_counts=True)
    return int(values[np.argmax(counts)])


# --------------------------------------------------------------------------- random encodings

_FILTERS = (
    Image.Resampling.BILINEAR,
    Image.Resampling.BICUBIC,
    Image.Resampling.BOX,
    Image.Resampling.LANCZOS,
    Image.Resampling.NEAREST,
)


def random_encoding(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One random encoding of `image`, returned as the `size`-px array the model sees.

    A resize chain (0-2 intermediate sides between size/2 and 2x size, random filters), then
    JPEG at a quality drawn from 30-95 (60% of the time) or a lossless copy; 15% of images are
    lightly blurred first. The service's own bilinear resize to `size` comes last.
    """
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    for _ in range(int(rng.integers(0, 3))):
        side = int(rng.integers(max(2, size // 2), 2 * size + 1))
        pil = pil.resize((side, side), _FILTERS[int(rng.integers(len(_FILTERS)))])
    side = int(rng.choice([size, size, pil.size[0]]))
    pil = pil.resize((side, side), _FILTERS[int(rng.integers(len(_FILTERS) - 1))])
    if rng.random() < 0.15:
        pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    array = np.asarray(pil, dtype=np.uint8)
    if rng.random() < 0.6:
        quality = int(rng.integers(JPEG_RANGE[0], JPEG_RANGE[1] + 1))
        array = decode_image(encode_image(array, "jpeg", quality=quality))
    return resize(array, size)


def random_encodings(
    images: np.ndarray | list[np.ndarray],
    size: int,
    seed: int,
    progress: bool = False,
    match_in: float = 0.0,
    in_quality: int | None = None,
) -> np.ndarray:
    """`random_encoding` of every image, seeded by (seed, index): (N, size, size, 3) uint8.

    With probability `match_in` an image first goes through the in-distribution's pipeline
    (`match-in` at `in_quality`; a plain resize when that is None).
    """
    from tqdm.auto import tqdm

    match = ImageTransform("match-in", "match-in")
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i in tqdm(range(len(images)), desc="encodings", disable=not progress, leave=False):
        image = images[i]
        if match_in > 0 and np.random.default_rng([seed, i, 1]).random() < match_in:
            image = match.apply(image, size, in_quality)  # its own draw: the rest stay as they were
        out[i] = random_encoding(image, size, np.random.default_rng([seed, i]))
    return out
