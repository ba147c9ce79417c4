"""Image encoding and decoding shared by the client and the service.

Images travel as uint8 arrays of shape (H, W, 3) inside the project and as PNG or JPEG bytes
over HTTP. Decoding is strict: anything that is not a complete image raises `ImageError` with a
reason, and images larger than a pixel budget are refused from their header, before decoding.
The PNGs clients send take a faster path (their rows unfiltered with numpy, or torchvision's
libpng); Pillow reads everything else.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import io
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

ENCODE_FORMATS = ("png", "jpeg", "raw")
"""`raw` is the (H, W, 3) uint8 array's own bytes: what a binary tensor carries (KServe v2)."""
DECODE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO")
"""What the API reads. Pillow's other plugins (EPS through Ghostscript, PSD, FITS, ...) are
never tried on untrusted bytes: more parsers would only be more attack surface."""


class ImageError(ValueError):
    """A payload that is not a usable image. `kind` is a stable machine-readable reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ImageTooLargeError(ImageError):
    """An image whose header declares more pixels than allowed (a decompression bomb)."""

    def __init__(self, message: str) -> None:
        super().__init__("image_too_large", message)


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 array; PNG is lossless, so the victim sees exactly the array."""
    if fmt == "raw":
        return np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if fmt == "png":
        return encode_png(array)
    if fmt != "jpeg":
        raise ValueError(f"unknown image format {fmt!r}; use one of {ENCODE_FORMATS}")
    return _pillow_bytes(array, "JPEG", quality=quality)


def _pillow_bytes(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
"""Channels -> PNG colour type: grey, grey and alpha, RGB, RGBA (as `Image.fromarray` had)."""


def encode_png(array: np.ndarray) -> bytes:
    """An 8-bit PNG of an (H, W) or (H, W, C) array, C from 1 to 4: IHDR, one IDAT, IEND.

    Every row takes PNG's Up filter (its difference from the row above; the first row's is
    itself) and zlib's level 1. Pillow's encoder (adaptive filters, level 1) spent 2.7 times as
    long on a 32-px image, 80 us more each: 2.6 ms of the attacker's CPU per 32-image request
    (`benchmarks.components`, `png_encode`), for files within 5% of the same size on
    photographs (Up is the filter that suits them best here; raw rows took 2.1 times the bytes
    at 64 px). `pixels_digest` keys the transfer set, so the bytes need not match Pillow's."""
    pixels = np.ascontiguousarray(array, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in _PNG_COLOUR_TYPES or 0 in pixels.shape:
        raise ValueError(f"cannot encode an array of shape {array.shape} as a PNG")
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # the Up filter
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG defines it
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            png_chunk(b"IHDR", header),
            png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1)),
            png_chunk(b"IEND", b""),
        )
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: its length, type, data and CRC (of the type and the data)."""
    return b"".join(
        (
            len(data).to_bytes(4, "big"),
            kind,
            data,
            zlib.crc32(data, zlib.crc32(kind)).to_bytes(4, "big"),
        )
    )


def encode_png_pillow(array: np.ndarray) -> bytes:
    """Pillow's PNG of the array at level 1: what `encode_image` made before `encode_png`, for
    comparing the transfer sets that predate pixel digests by the bytes they sent."""
    return _pillow_bytes(array, "PNG", compress_level=1)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@functools.cache
def _libpng_decoder() -> Callable[[bytes], np.ndarray] | None:
    """PNG bytes -> (C, H, W) uint8 array through torchvision's libpng decoder
    (`torch.ops.image.decode_png`), loaded from its extension library without importing
    torchvision: that import pulls in torch._dynamo, about 4 s of CPU in every process that
    decodes an image (each service a test starts, each CLI command). None where the library is
    not there or does not load. Raises RuntimeError for a file libpng refuses."""
    try:
        import torch

        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            return None
        folder = Path(spec.origin).parent
        library = next(
            (folder / f"image{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
             if (folder / f"image{suffix}").is_file()),
            None,
        )  # fmt: skip
        if library is None:
            return None
        torch.ops.load_library(str(library))
        op = torch.ops.image.decode_png
    except Exception:  # no torchvision, or a build without its image extension
        return None

    def decode(data: bytes) -> np.ndarray:
        # mode 0: the file's own channels (RGB here); no EXIF rotation (PNGs carry none)
        return op(torch.frombuffer(bytearray(data), dtype=torch.uint8), 0, False).numpy()

    return decode


def _decode_plain_png(data: bytes, max_pixels: int) -> np.ndarray | None:
    """The PNGs clients send (8-bit RGB, not interlaced, no chunk but IHDR, IDAT and IEND),
    their data checked first; None for any other payload, or one that is damaged or that libpng
    would complain of: Pillow then decodes it or refuses it with the reason, quietly (libpng
    prints on stderr, and strangers' files must not write the service's logs).

    Rows filtered by None, Sub or Up (every row of `encode_png`'s files) are unfiltered here
    from the data the check inflated, where libpng inflated it again: 0.68 of the CPU for a
    32-px file (results/bench/components-runs/2026-12-08-decode-ab/). A file with an Average or
    Paeth row (Pillow's adaptive filters pick them) goes to torchvision's libpng, in 0.63 of
    Pillow's time. The pixels are the same either way; tests/test_imaging.py compares them with
    Pillow's."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (depth, colour, interlace) != (8, 2, 0) or width * height > max_pixels:
        return None
    if not (0 < width <= _LIBPNG_MAX_SIDE and 0 < height <= _LIBPNG_MAX_SIDE):
        return None  # libpng warns about these on stderr
    stream = _plain_stream(data)
    if stream is None:
        return None
    whole, inflated = _inflated_rows(stream, height, 1 + 3 * width)
    if not whole:
        return None
    if inflated is not None:
        return unfilter_rows(np.frombuffer(inflated, dtype=np.uint8).reshape(height, -1))
    decode_png = _libpng_decoder()
    if decode_png is None:
        return None
    try:
        pixels = decode_png(data)
    except RuntimeError:
        return None
    if pixels.shape != (3, height, width):
        return None
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def unfilter_rows(rows: np.ndarray) -> np.ndarray | None:
    """An 8-bit RGB PNG's inflated rows, (H, 1 + 3W) each led by its filter type, as (H, W, 3)
    pixels where every row is filtered by None (0), Sub (1) or Up (2); None where any row is
    filtered otherwise. PNG's arithmetic is modulo 256, as uint8 sums wrap.

    Sub rows are running sums along the row, per channel; a row after Up rows is the sum of
    their differences over the last row that was not Up (or over zeros, above the first row):
    the running sum down the image, less its value just above that row."""
    height = rows.shape[0]
    kinds = rows[:, 0]
    if kinds.max(initial=0) > 2:
        return None
    deltas = rows[:, 1:].reshape(height, -1, 3)
    up = kinds == 2
    if up.all():
        return np.cumsum(deltas, axis=0, dtype=np.uint8)
    deltas = deltas.copy()
    sub = kinds == 1
    if sub.any():
        deltas[sub] = np.cumsum(deltas[sub], axis=1, dtype=np.uint8)
    if not up.any():
        return deltas
    sums = np.cumsum(deltas, axis=0, dtype=np.uint8)
    above = np.concatenate((np.zeros_like(sums[:1]), sums[:-1]))
    starts = np.maximum.accumulate(np.where(up, 0, np.arange(height)))
    return sums - above[starts]


_PLAIN_CHUNKS = (b"IHDR", b"IDAT", b"IEND")
_LIBPNG_MAX_SIDE = 1_000_000
"""libpng's default limit on a width or a height (PNG_USER_WIDTH_MAX, PNG_USER_HEIGHT_MAX)."""


def _plain_stream(data: bytes) -> bytes | None:
    """The compressed image data of a PNG with only IHDR, IDAT and IEND, each whole with its
    CRC right (what encoders write by default); None for anything else, which goes to Pillow:
    libpng would print on stderr about a damaged file, or a colour profile it finds too short
    or a known-incorrect sRGB one."""
    view, position, stream = memoryview(data), 8, []
    while position + 12 <= len(data):
        length = int.from_bytes(view[position : position + 4], "big")
        end = position + 12 + length
        kind = bytes(view[position + 4 : position + 8])
        if end > len(data) or kind not in _PLAIN_CHUNKS:
            return None
        if zlib.crc32(view[position + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return None
        if kind == b"IEND":
            return b"".join(stream)
        if kind == b"IDAT":
            stream.append(view[position + 8 : end - 4])
        position = end
    return None


_INFLATE_STEP = 1 << 20
"""Bytes inflated at a time by `_inflated_rows` (and `_check_png_data`)."""


def _inflated_rows(stream: bytes, rows: int, row_bytes: int) -> tuple[bool, bytes | None]:
    """Whether the compressed data inflates, its checksum included, to exactly `rows` rows of
    `row_bytes`, each led by a filter type PNG defines (0-4); and, where every row's filter is
    None, Sub or Up (those `unfilter_rows` takes), the inflated data, else None. CRCs protect
    the chunks, not their content: data forged behind correct CRCs would make libpng print
    "Not enough image data", "Too much image data" or "bad adaptive filter value" on stderr.
    Inflated in pieces, never past the size the header declares."""
    inflater, tail, seen, total = zlib.decompressobj(), stream, 0, rows * row_bytes
    pieces: list[bytes] | None = []
    try:
        while not inflater.eof:
            before = len(tail)
            piece = inflater.decompress(tail, min(_INFLATE_STEP, total - seen + 1))
            tail = inflater.unconsumed_tail
            if not piece and (not tail or len(tail) == before):  # the data stops short
                return False, None
            if seen + len(piece) > total:
                return False, None
            filters = piece[(-seen) % row_bytes :: row_bytes]  # bytes: numpy's max cost 4x more
            top = max(filters) if filters else 0
            if top > 4:
                return False, None
            if top > 2:  # an Average or Paeth row: libpng decodes the file
                pieces = None
            elif pieces is not None:
                pieces.append(piece)
            seen += len(piece)
    except zlib.error:
        return False, None
    if seen != total or inflater.unused_data:
        return False, None
    return True, None if pieces is None else b"".join(pieces)


def decode_image(data: bytes, max_pixels: int = 16_000_000) -> np.ndarray:
    """Decode bytes into an RGB uint8 array, refusing empty, corrupt, truncated or huge images."""
    pixels = _decode_plain_png(data, max_pixels)
    return pixels if pixels is not None else decode_with_pillow(data, max_pixels)


def decode_with_pillow(data: bytes, max_pixels: int = 16_000_000) -> np.ndarray:
    """`decode_image` for every format and layout, with its refusals (see `decode_image`)."""
    if not data:
        raise ImageError("empty_image", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt-file chatter must not flood the logs
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} = {width * height} pixels, "
                    f"over the limit of {max_pixels}"
                )
            image.load()
            if image.format == "PNG":
                _check_png_data(data)
            if image.mode != "RGB":  # convert() copies even an RGB image
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            "not_an_image", "the payload is not an image format this API reads"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image is a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt_image", f"the image is corrupt or truncated: {exc}") from None


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Samples per pixel of each PNG colour type: grey, RGB, palette, grey-alpha, RGBA."""
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip
"""The interlaced passes: first column, first row, column step, row step."""


def png_data_bytes(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """How many bytes a PNG's image data inflates to (each row led by its filter byte)."""
    bits = depth * _CHANNELS.get(colour, 1)

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if interlace == 0:
        return rows(width, height)
    return sum(rows(len(range(x, width, dx)), len(range(y, height, dy))) for x, y, dx, dy in _ADAM7)


def _check_png_data(data: bytes) -> None:
    """Refuse a PNG whose image data stops short of the rows its header declares. Pillow reads
    such a file without a word, the missing rows black, whenever the compressed stream itself
    ends properly; the service would then answer for pixels nobody sent. (Data beyond the last
    row is ignored, as every reader does.) Run after Pillow decoded the file, so its header
    and chunks are known to be sound."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    need = png_data_bytes(width, height, depth, colour, interlace)
    inflater, seen, position = zlib.decompressobj(), 0, 8
    while position + 8 <= len(data) and seen < need and not inflater.eof:
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            tail = data[position + 8 : position + 8 + length]
            while tail and seen < need and not inflater.eof:
                try:  # Pillow inflated these bytes already; zlib refusing them is no crash
                    piece = inflater.decompress(tail, min(_INFLATE_STEP, need - seen))
                except zlib.error:
                    break
                if not piece and inflater.unconsumed_tail == tail:
                    break  # no progress
                seen, tail = seen + len(piece), inflater.unconsumed_tail
        position += 12 + length
    if seen < need:
        raise ImageError(
            "corrupt_image",
            f"the image is truncated: its PNG image data inflates to {seen} of the {need} "
            f"bytes its {width}x{height} header needs",
        )


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 array to (size, size, 3): the one resize both sides use."""
    if array.shape[0] == size and array.shape[1] == size:
        return array
    image = Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def to_rgb(array: np.ndarray) -> np.ndarray:
    """Grey (H, W), grey-alpha, RGB or RGBA arrays of any dtype to (H, W, 3) uint8."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.shape[2] == 4:
        a = a[..., :3]
    elif a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def arrays_digest(arrays: Sequence[np.ndarray]) -> str:
    """A short SHA-256 digest of arrays' shapes, types and bytes: what names a cache of what was
    made from them (SHA-256 reads 1.5 GB/s here: 0.1 s for 50,000 CIFAR-size images)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]
