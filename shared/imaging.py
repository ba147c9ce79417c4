"""Image encoding and decoding shared by the client and the service.

Images travel as uint8 arrays of shape (H, W, 3) inside the project and as PNG or JPEG bytes
over HTTP. Decoding is strict: anything that is not a complete image raises `ImageError` with a
reason, and images larger than a pixel budget are refused from their header, before decoding.
"""

from __future__ import annotations

import io
import warnings

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
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use one of {ENCODE_FORMATS}")
    return buffer.getvalue()


def decode_image(data: bytes, max_pixels: int = 16_000_000) -> np.ndarray:
    """Decode bytes into an RGB uint8 array, refusing empty, corrupt, truncated or huge images."""
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
