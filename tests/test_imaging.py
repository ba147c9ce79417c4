"""The libpng fast path decodes the PNGs clients send to exactly Pillow's pixels, and leaves
everything else (other layouts, damaged files, oversized images) to Pillow's checks."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from shared.imaging import (
    ImageError,
    ImageTooLargeError,
    _decode_plain_png,
    decode_image,
    decode_with_pillow,
    encode_image,
)


def pillow_pixels(data: bytes) -> np.ndarray:
    assert np.array_equal(decode_with_pillow(data), reference := decode_image(data))
    return reference


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunk(png: bytes, extra: bytes) -> bytes:
    """The PNG with a chunk inserted right after IHDR (8-byte signature + 25-byte IHDR)."""
    return png[:33] + extra + png[33:]


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_client_pngs_take_the_fast_path_and_match_pillow(rgb, level):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=level)
    fast = _decode_plain_png(buffer.getvalue(), 10**6)
    assert fast is not None and fast.flags.c_contiguous
    assert np.array_equal(fast, rgb) and np.array_equal(fast, pillow_pixels(buffer.getvalue()))
    assert np.array_equal(_decode_plain_png(encode_image(rgb), 10**6), rgb)


def test_files_with_other_chunks_go_to_pillow_and_nothing_reaches_stderr(rgb, capfd):
    """A gamma chunk, text, or a colour profile libpng finds too short (it warns on stderr
    about such profiles, common in photographs): Pillow decodes them, the same pixels, and
    the service's logs stay clean."""
    png = encode_image(rgb)
    gamma = with_chunk(png, chunk(b"gAMA", struct.pack(">I", 100000)))
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "hello")
    buffer = io.BytesIO()
    profile = b"\0" * 128  # not a valid profile: libpng would print "iCCP: too short"
    Image.fromarray(rgb).save(buffer, format="PNG", pnginfo=info, icc_profile=profile)
    capfd.readouterr()
    for data in (gamma, buffer.getvalue()):
        assert _decode_plain_png(data, 10**6) is None
        assert np.array_equal(decode_image(data), rgb)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_other_layouts_are_left_to_pillow(rgb, mode):
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, format="PNG")
    assert _decode_plain_png(buffer.getvalue(), 10**6) is None
    assert np.array_equal(decode_image(buffer.getvalue()), pillow_pixels(buffer.getvalue()))


def test_transparency_and_16_bit_samples_are_left_to_pillow(rgb):
    png = encode_image(rgb)
    transparent = with_chunk(png, chunk(b"tRNS", struct.pack(">HHH", 0, 0, 0)))
    assert _decode_plain_png(transparent, 10**6) is None
    assert np.array_equal(decode_image(transparent), pillow_pixels(transparent))
    buffer = io.BytesIO()
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(buffer, format="PNG")
    assert _decode_plain_png(buffer.getvalue(), 10**6) is None


def test_damaged_pngs_are_refused_with_a_reason(rgb):
    png = encode_image(rgb)
    idat = png.index(b"IDAT")
    flipped = bytearray(png)
    flipped[idat + 10] ^= 0xFF  # damaged compressed data (and its CRC no longer matches)
    for damaged in (png[: len(png) // 2], bytes(flipped)):
        assert _decode_plain_png(damaged, 10**6) is None
        with pytest.raises(ImageError) as info:
            decode_image(damaged)
        assert info.value.kind == "corrupt_image"
    assert _decode_plain_png(png[:-12], 10**6) is None  # no IEND: Pillow reads it all the same
    assert np.array_equal(decode_image(png[:-12]), rgb)


def test_damage_behind_correct_checksums_is_refused_too(rgb, capfd):
    png = encode_image(rgb)
    start = png.index(b"IDAT") - 4
    length = int.from_bytes(png[start : start + 4], "big")
    garbage = bytes(range(256)) * (length // 256 + 1)
    forged = png[:start] + chunk(b"IDAT", garbage[:length]) + png[start + 12 + length :]
    assert _decode_plain_png(forged, 10**6) is None
    with pytest.raises(ImageError) as info:
        decode_image(forged)
    assert info.value.kind == "corrupt_image"


def test_oversized_png_is_refused_from_its_header_before_decoding():
    header = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    )
    data = header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    assert _decode_plain_png(data, 16_000_000) is None
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=16_000_000)


def test_the_fast_path_does_not_import_torchvision():
    """Importing torchvision pulls in torch._dynamo (about 4 s per process): the decoder is
    loaded from torchvision's extension library alone, in every process that decodes."""
    script = (
        "import sys, numpy as np\n"
        "from shared.imaging import _decode_plain_png, encode_image\n"
        "image = np.zeros((8, 8, 3), np.uint8)\n"
        "assert _decode_plain_png(encode_image(image), 64) is not None\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[1])
