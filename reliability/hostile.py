"""Hostile images for `/v1/predict`, as hypothesis strategies (issue 12, part 1).

Each case is `(family, bytes)`: random bytes behind valid magic numbers, huge declared
dimensions, deep or oversized PNG chunks, truncated and progressive JPEGs, animated GIF/PNG/WebP,
16-bit, CMYK, palette, alpha and grey-alpha images, EXIF rotations, WebP/TIFF/BMP/ICO, zero-size
headers, formats the API does not read (EPS, PSD, ...), and byte flips of good images.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from shared import imaging

MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff\xe0", "gif": b"GIF89a", "bmp": b"BM",
    "tiff-le": b"II*\x00", "tiff-be": b"MM\x00*", "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "ico": b"\x00\x00\x01\x00", "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n", "psd": b"8BPS",
    "jp2": b"\x00\x00\x00\x0cjP  \r\n\x87\n", "qoi": b"qoif", "avif": b"\x00\x00\x00\x1cftypavif",
}  # fmt: skip

MODES = ["RGB", "RGBA", "L", "LA", "P", "PA", "1", "I", "I;16", "F", "CMYK", "YCbCr"]
SAVE_FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO"]


def png_chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    """One PNG chunk, its CRC right (`shared.imaging.png_chunk`); `length` makes its length
    field lie."""
    chunk = imaging.png_chunk(kind, data)
    return chunk if length is None else struct.pack(">I", length) + chunk[4:]


@functools.cache
def _bomb() -> bytes:
    """20 MB of zeros in about 20 kB of zlib."""
    return zlib.compress(bytes(20_000_000), 9)


def png_header(
    width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0
) -> bytes:
    """The signature and IHDR of a PNG (8-bit RGB unless told)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return MAGIC["png"] + png_chunk(b"IHDR", ihdr)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@st.composite
def arrays(draw, max_side: int = 48) -> np.ndarray:
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@st.composite
def magic_then_random(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(MAGIC)))
    return f"magic:{name}", MAGIC[name] + draw(st.binary(max_size=2048))


@st.composite
def huge_dimensions(draw) -> tuple[str, bytes]:
    w = draw(st.integers(0, 2**31 - 1))
    h = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["png", "gif", "bmp", "jpeg"]))
    if kind == "png":
        image_data = png_chunk(b"IDAT", zlib.compress(bytes(64)))
        body = png_header(w, h) + image_data + png_chunk(b"IEND", b"")
    elif kind == "gif":
        body = MAGIC["gif"] + struct.pack("<HHBBB", w & 0xFFFF, h & 0xFFFF, 0, 0, 0) + b";"
    elif kind == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)
        body = b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\x00" * 64
    else:  # a baseline SOF0 frame header declaring up to 65535 x 65535
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h & 0xFFFF, w & 0xFFFF, 3)
        sof += b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
        body = b"\xff\xd8" + sof + draw(st.binary(max_size=256)) + b"\xff\xd9"
    return f"huge:{kind}", body


@st.composite
def png_chunks(draw) -> tuple[str, bytes]:
    """Valid pixels wrapped in many, oversized, lying or compressed-bomb ancillary chunks."""
    image = Image.fromarray(draw(arrays(16)))
    good = _save(image, "PNG")
    head, rest = good[:33], good[33:]
    kind = draw(st.sampled_from(["many", "lying-length", "ztxt-bomb", "huge-text", "iccp-bomb"]))
    if kind == "many":
        extra = png_chunk(b"tEXt", b"k\x00v") * draw(st.integers(100, 20_000))
    elif kind == "lying-length":
        extra = png_chunk(b"tEXt", b"k\x00v", length=draw(st.integers(2**20, 2**32 - 1)))
    elif kind == "ztxt-bomb":
        extra = png_chunk(b"zTXt", b"k\x00\x00" + _bomb())
    elif kind == "iccp-bomb":
        extra = png_chunk(b"iCCP", b"p\x00\x00" + _bomb())
    else:
        extra = png_chunk(b"tEXt", b"k\x00" + b"v" * draw(st.integers(1, 4_000_000)))
    return f"png-chunks:{kind}", head + extra + rest


@st.composite
def forged_image_data(draw) -> tuple[str, bytes]:
    """A plain RGB PNG whose compressed image data is forged behind correct CRCs: garbage, too
    few or too many rows, an unknown row filter, no checksum, or bytes after its end (what made
    libpng print on the service's stderr before the stream was checked first)."""
    pixels = draw(arrays(16))
    h, w = pixels.shape[:2]
    raw = bytearray(np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, -1)], 1))
    kind = draw(st.sampled_from(["garbage", "short", "long", "bad-filter", "no-checksum",
                                 "trailing-bytes"]))  # fmt: skip
    if kind == "garbage":
        stream = draw(st.binary(min_size=1, max_size=512))
    elif kind == "short":
        stream = zlib.compress(raw[: draw(st.integers(0, len(raw) - 1))])
    elif kind == "long":
        stream = zlib.compress(raw + bytes(draw(st.integers(1, 4 * len(raw)))))
    elif kind == "bad-filter":
        raw[draw(st.integers(0, h - 1)) * (1 + 3 * w)] = draw(st.integers(5, 255))
        stream = zlib.compress(raw)
    elif kind == "no-checksum":
        stream = zlib.compress(raw)[: -draw(st.integers(1, 4))]
    else:
        stream = zlib.compress(raw) + draw(st.binary(min_size=1, max_size=64))
    body = png_header(w, h) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")
    return f"forged-idat:{kind}", body


@st.composite
def jpegs(draw) -> tuple[str, bytes]:
    image = Image.fromarray(draw(arrays(64)))
    progressive = draw(st.booleans())
    mode = draw(st.sampled_from(["RGB", "L", "CMYK"]))
    data = _save(image.convert(mode), "JPEG", quality=draw(st.integers(1, 95)),
                 progressive=progressive)  # fmt: skip
    cut = draw(st.one_of(st.none(), st.integers(0, len(data) - 1)))
    name = f"jpeg:{'progressive' if progressive else 'baseline'}:{mode}"
    return (name, data) if cut is None else (name + ":truncated", data[:cut])


@st.composite
def animated(draw) -> tuple[str, bytes]:
    frames = [Image.fromarray(draw(arrays(24))) for _ in range(draw(st.integers(2, 6)))]
    frames = [f.resize(frames[0].size) for f in frames]
    fmt = draw(st.sampled_from(["GIF", "PNG", "WEBP"]))
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return f"animated:{fmt.lower()}", data


@st.composite
def modes_and_formats(draw) -> tuple[str, bytes]:
    """Every pixel mode in every format that can hold it (16-bit, CMYK, palette, alpha, ...)."""
    array = draw(arrays(40))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(SAVE_FORMATS))
    base = Image.fromarray(array)
    if mode == "I;16":
        image = Image.fromarray(array[..., 0].astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        image = base.convert("L").convert(mode)
    elif mode == "PA":
        image = base.convert("RGBA").convert("PA")
    else:
        image = base.convert(mode)
    try:
        return f"mode:{mode}:{fmt.lower()}", _save(image, fmt)
    except (OSError, ValueError, KeyError):  # a format that cannot hold the mode: save as TIFF
        return f"mode:{mode}:tiff", _save(image, "TIFF")


@st.composite
def exif_rotations(draw) -> tuple[str, bytes]:
    image = Image.fromarray(draw(arrays(32)))
    exif = Image.Exif()
    exif[0x0112] = draw(st.integers(0, 12))  # orientation: 1-8 valid, the rest hostile
    fmt = draw(st.sampled_from(["JPEG", "PNG", "WEBP", "TIFF"]))
    return f"exif:{fmt.lower()}", _save(image, fmt, exif=exif.tobytes())


@st.composite
def zero_size(draw) -> tuple[str, bytes]:
    w, h = draw(st.sampled_from([(0, 0), (0, 7), (7, 0)]))
    kind = draw(st.sampled_from(["png", "gif", "bmp"]))
    if kind == "png":
        return "zero:png", png_header(w, h) + png_chunk(b"IEND", b"")
    if kind == "gif":
        return "zero:gif", MAGIC["gif"] + struct.pack("<HHBBB", w, h, 0, 0, 0) + b";"
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)
    return "zero:bmp", b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info


@st.composite
def flipped(draw) -> tuple[str, bytes]:
    """A good image in any format with a few bytes overwritten or cut."""
    fmt = draw(st.sampled_from(SAVE_FORMATS))
    data = bytearray(_save(Image.fromarray(draw(arrays(32))), fmt))
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(1, len(data)))]
    return f"flipped:{fmt.lower()}", bytes(data)


def hostile_images() -> st.SearchStrategy[tuple[str, bytes]]:
    return st.one_of(
        magic_then_random(), huge_dimensions(), png_chunks(), forged_image_data(), jpegs(),
        animated(), modes_and_formats(), exif_rotations(), zero_size(), flipped(),
    )  # fmt: skip
