"""The fast path (numpy for rows filtered by None, Sub or Up, libpng for the rest) decodes the
PNGs clients send to exactly Pillow's pixels, and leaves everything else (other layouts, damaged
files, oversized images) to Pillow's checks."""

from __future__ import annotations

import contextlib
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, PngImagePlugin

from reliability.hostile import png_chunk, png_header
from shared import imaging
from shared.imaging import (
    ImageError,
    ImageTooLargeError,
    _decode_plain_png,
    decode_image,
    decode_with_pillow,
    encode_image,
    encode_png,
    encode_png_pillow,
)


def pillow_pixels(data: bytes) -> np.ndarray:
    assert np.array_equal(decode_with_pillow(data), reference := decode_image(data))
    return reference


def image_data_span(png: bytes) -> tuple[int, int]:
    """Where a one-IDAT PNG's IDAT chunk starts (its length field) and its data's length."""
    start = png.index(b"IDAT") - 4
    return start, int.from_bytes(png[start : start + 4], "big")


def with_image_data(png: bytes, *streams: bytes) -> bytes:
    """The PNG with its IDAT chunk replaced by one IDAT per stream, each with a correct CRC."""
    start, length = image_data_span(png)
    body = b"".join(png_chunk(b"IDAT", stream) for stream in streams)
    return png[:start] + body + png[start + 12 + length :]


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


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 4)),
    )
)
def test_the_png_encoder_is_lossless_for_pillow_and_libpng(image):
    """Any 8-bit grey, grey-alpha, RGB or RGBA array: Pillow reads back the exact array (the Up
    filter's differences wrap modulo 256), and RGB takes libpng's fast path to the same pixels."""
    data = encode_png(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[image.shape[2]]
        back = np.asarray(opened)
    assert np.array_equal(back.reshape(image.shape), image)
    if image.shape[2] == 3:
        assert np.array_equal(_decode_plain_png(data, 10**6), image)
        assert np.array_equal(decode_image(data), image)


def filtered_png(image: np.ndarray, kinds: list[int]) -> bytes:
    """An 8-bit RGB PNG of the image whose row y is filtered by PNG filter type kinds[y]
    (None, Sub, Up, Average, Paeth), written from the specification's predictors over the raw
    neighbours: a (left, 3 bytes back), b (above), c (above and left)."""
    height, width, _ = image.shape
    raw = image.reshape(height, width * 3).astype(np.int16)
    lines = []
    for y, kind in enumerate(kinds):
        x = raw[y]
        b = raw[y - 1] if y else np.zeros_like(x)
        a = np.concatenate((np.zeros(3, np.int16), x[:-3]))
        c = np.concatenate((np.zeros(3, np.int16), b[:-3]))
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        predicted = [np.zeros_like(x), a, b, (a + b) // 2, paeth][kind]
        lines.append(bytes([kind]) + ((x - predicted) % 256).astype(np.uint8).tobytes())
    stream = zlib.compress(b"".join(lines))
    return png_header(width, height) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_rows_of_every_filter_type_decode_to_the_image_and_to_pillows_pixels(data):
    """Any sequence of row filters: None, Sub and Up rows are unfiltered by numpy (a Sub row
    then Up rows sum over the Sub row's pixels, not its differences); a file with an Average or
    Paeth row goes to libpng; both give the image, as Pillow does."""
    height, width = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    image = data.draw(arrays(np.uint8, (height, width, 3)))
    kinds = data.draw(st.lists(st.integers(0, 4), min_size=height, max_size=height))
    png = filtered_png(image, kinds)
    with Image.open(io.BytesIO(png)) as opened:
        assert np.array_equal(np.asarray(opened), image)  # the forged file is a true PNG
    fast = _decode_plain_png(png, 10**6)
    assert fast is not None and fast.flags.c_contiguous and fast.dtype == np.uint8
    assert np.array_equal(fast, image)
    assert np.array_equal(decode_with_pillow(png), image)


def test_none_sub_and_up_rows_never_reach_libpng_and_average_or_paeth_rows_do(rgb, monkeypatch):
    """The numpy path is the one taken for the attacker's files (every row Up), and for any
    file of None, Sub and Up rows; one Average or Paeth row sends the file to libpng."""
    calls = []
    libpng = imaging._libpng_decoder()
    assert libpng is not None

    def counted(data: bytes) -> np.ndarray:
        calls.append(len(data))
        return libpng(data)

    monkeypatch.setattr(imaging, "_libpng_decoder", lambda: counted)
    height = rgb.shape[0]
    for kinds in ([2] * height, [0, 1, 2] * (height // 3), [1] * height, [0] * height):
        assert np.array_equal(_decode_plain_png(filtered_png(rgb, kinds), 10**6), rgb)
    assert np.array_equal(_decode_plain_png(encode_png(rgb), 10**6), rgb)
    assert calls == []
    for kind in (3, 4):
        kinds = [2] * height
        kinds[5] = kind
        assert np.array_equal(_decode_plain_png(filtered_png(rgb, kinds), 10**6), rgb)
    assert len(calls) == 2


def test_unfilter_rows_by_hand():
    """Two pixels a row. Row 0 Up (over zeros): itself. Row 1 Sub: 1, 2, 3 then 1+4, 2+5,
    3+6. Row 2 Up over row 1's pixels. Row 3 None. Row 4 Up: 250 + 10 wraps to 4."""
    rows = np.array(
        [
            [2, 9, 8, 7, 6, 5, 4],
            [1, 1, 2, 3, 4, 5, 6],
            [2, 1, 1, 1, 1, 1, 1],
            [0, 250, 0, 0, 0, 0, 255],
            [2, 10, 0, 0, 0, 0, 1],
        ],
        np.uint8,
    )
    expected = [
        [[9, 8, 7], [6, 5, 4]],
        [[1, 2, 3], [5, 7, 9]],
        [[2, 3, 4], [6, 8, 10]],
        [[250, 0, 0], [0, 0, 255]],
        [[4, 0, 0], [0, 0, 0]],
    ]
    assert np.array_equal(imaging.unfilter_rows(rows), np.array(expected, np.uint8))
    assert imaging.unfilter_rows(np.array([[3, 1, 2, 3]], np.uint8)) is None


def test_the_png_encoder_takes_grey_arrays_and_refuses_what_png_cannot_hold(rgb):
    grey = rgb[:, :, 0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(grey)))), grey)
    assert encode_image(rgb) == encode_png(rgb)
    assert np.array_equal(decode_image(encode_png_pillow(rgb)), rgb)
    for bad in (
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros(5, np.uint8),
    ):
        with pytest.raises(ValueError, match="cannot encode an array of shape"):
            encode_png(bad)


def test_the_png_encoder_filters_rows_by_their_difference_from_the_row_above():
    """The stream, inflated, is each row led by filter type 2 (Up), the first row as it is."""
    image = np.array([[[10, 20, 30], [0, 0, 255]], [[5, 25, 30], [1, 255, 0]]], np.uint8)
    data = encode_png(image)
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    rows = zlib.decompress(data[start : start + length])
    assert rows == bytes([2, 10, 20, 30, 0, 0, 255, 2, 251, 5, 0, 1, 255, 1])


def test_files_with_other_chunks_go_to_pillow_and_nothing_reaches_stderr(rgb, capfd):
    """A gamma chunk, text, or a colour profile libpng finds too short (it warns on stderr
    about such profiles, common in photographs): Pillow decodes them, the same pixels, and
    the service's logs stay clean."""
    png = encode_image(rgb)
    gamma = with_chunk(png, png_chunk(b"gAMA", struct.pack(">I", 100000)))
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
    transparent = with_chunk(png, png_chunk(b"tRNS", struct.pack(">HHH", 0, 0, 0)))
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


FORGERIES = ["garbage", "short", "long", "bad_filter", "no_checksum", "trailing_bytes"]


@pytest.mark.parametrize("step", [None, 97])
@pytest.mark.parametrize("forgery", FORGERIES)
def test_data_forged_behind_correct_checksums_never_reaches_libpng(
    rgb, capfd, monkeypatch, forgery, step
):
    """CRCs protect chunks, not their content: a compressed stream that is garbage, inflates
    to too few or too many rows, names an unknown row filter, lacks its checksum or has bytes
    after its end is left to Pillow, which refuses or reads it quietly, where libpng printed
    "Not enough image data", "bad adaptive filter value"... on the service's stderr. A step of
    97 bytes inflates in pieces that cut the 121-byte rows anywhere."""
    if step is not None:
        monkeypatch.setattr(imaging, "_INFLATE_STEP", step)
    png = encode_image(rgb)
    start, length = image_data_span(png)
    raw = zlib.decompress(png[start + 8 : start + 8 + length])
    row = 1 + 3 * rgb.shape[1]
    bad_filter = bytearray(raw)
    bad_filter[17 * row] = 7
    stream = {
        "garbage": (bytes(range(256)) * (length // 256 + 1))[:length],
        "short": zlib.compress(raw[:-50]),  # ends inside a row
        "long": zlib.compress(raw + bytes(row)),
        "bad_filter": zlib.compress(bytes(bad_filter)),
        "no_checksum": zlib.compress(raw)[:-4],
        "trailing_bytes": zlib.compress(raw) + b"\0\0",
    }[forgery]
    forged = with_image_data(png, stream)
    capfd.readouterr()
    assert _decode_plain_png(forged, 10**6) is None
    try:
        pixels = decode_image(forged)
    except ImageError as exc:
        assert exc.kind == "corrupt_image"
    else:  # Pillow needs neither the checksum nor the end of the data
        assert forgery in ("long", "no_checksum", "trailing_bytes")
        assert np.array_equal(pixels, rgb)
    assert capfd.readouterr().err == ""
    assert np.array_equal(_decode_plain_png(png, 10**6), rgb)  # the true file still goes fast


@pytest.mark.parametrize("width, height", [(0, 64), (1_200_000, 1)])
def test_sides_libpng_warns_about_are_left_to_pillow(capfd, width, height):
    """A zero width (its 64 rows of one filter byte inflate right) and a width over libpng's
    default limit of 1,000,000 (1.2 megapixels: under the service's limit)."""
    raw = bytes(height * (1 + 3 * width))
    png = png_header(width, height)
    png += png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
    capfd.readouterr()
    assert _decode_plain_png(png, 16_000_000) is None
    with contextlib.suppress(ImageError):  # Pillow may refuse it: quietly
        assert decode_image(png).shape == (height, width, 3)
    assert capfd.readouterr().err == ""


def test_image_data_split_over_many_chunks_takes_the_fast_path(rgb, monkeypatch):
    """Encoders split large images' data over several IDAT chunks; inflated in pieces."""
    monkeypatch.setattr(imaging, "_INFLATE_STEP", 97)
    png = encode_image(rgb)
    start, length = image_data_span(png)
    stream = png[start + 8 : start + 8 + length]
    split = with_image_data(png, *(stream[i : i + 100] for i in range(0, length, 100)))
    assert split.count(b"IDAT") > 1
    assert np.array_equal(_decode_plain_png(split, 10**6), rgb)


def interlaced_png(rgb: np.ndarray, passes: int = 7) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG of the image, by hand (Pillow writes none), keeping
    the first `passes` passes' data; rows unfiltered."""
    height, width = rgb.shape[:2]
    raw = b"".join(
        b"".join(b"\0" + row.tobytes() for row in rgb[y::dy, x::dx])
        for x, y, dx, dy in imaging._ADAM7[:passes]
        if width > x and height > y
    )
    png = png_header(width, height, interlace=1)
    return png + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def test_image_data_sizes_follow_the_png_specification():
    """Hand-counted: 24 rows of 1 + 3 x 40 bytes; 3 rows of 1 + ceil(10 / 8) bytes at 1 bit;
    an interlaced 3x3 grey image's passes 1 and 4-7 hold 1, 1, 2, 2 and 3 pixels in rows of
    1 + 1, 1 + 1, 1 + 2, 1 + 1 (two rows) and 1 + 3 bytes."""
    assert imaging.png_data_bytes(40, 24, 8, 2, 0) == 24 * 121
    assert imaging.png_data_bytes(10, 3, 1, 0, 0) == 3 * 3
    assert imaging.png_data_bytes(3, 3, 8, 0, 1) == 2 + 2 + 3 + 2 * 2 + 4
    assert imaging.png_data_bytes(40, 24, 16, 6, 0) == 24 * (1 + 8 * 40)
    assert imaging.png_data_bytes(0, 5, 8, 2, 0) == 0


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "interlaced"])
def test_png_data_short_by_whole_rows_is_refused(rgb, mode, capfd):
    """Pillow reads a PNG whose compressed stream ends properly but holds fewer rows than its
    header declares, the rest black, without a word: the service would have answered for
    pixels nobody sent. Refused now, whatever the layout; the whole file still decodes."""
    if mode == "interlaced":
        whole, short = interlaced_png(rgb), interlaced_png(rgb, passes=6)
        assert np.array_equal(decode_image(whole), rgb)  # Pillow de-interlaces it right
    else:
        buffer = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buffer, format="PNG")
        whole = buffer.getvalue()
        start, length = image_data_span(whole)
        raw = zlib.decompress(whole[start + 8 : start + 8 + length])
        row = len(raw) // rgb.shape[0]
        short = with_image_data(whole, zlib.compress(raw[: 20 * row]))  # 20 of 24 rows
    with Image.open(io.BytesIO(short)) as image:  # what Pillow alone makes of it
        image.load()
    capfd.readouterr()
    with pytest.raises(ImageError) as info:
        decode_image(short)
    assert info.value.kind == "corrupt_image" and "truncated" in str(info.value)
    assert "header needs" in str(info.value)
    assert capfd.readouterr().err == ""
    decode_image(whole)


def test_the_row_check_turns_a_zlib_refusal_into_a_refusal_of_the_image(rgb, monkeypatch):
    """Pillow decoded the data first, so zlib should never refuse it in the check; were it to,
    the client gets `corrupt_image`, not a 500."""

    class Refusing:
        eof, unconsumed_tail = False, b""

        def decompress(self, data: bytes, max_length: int) -> bytes:
            raise zlib.error("invalid stored block lengths")

    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("L").save(buffer, format="PNG")  # the Pillow path
    monkeypatch.setattr(imaging.zlib, "decompressobj", Refusing)
    with pytest.raises(ImageError) as info:
        decode_image(buffer.getvalue())
    assert info.value.kind == "corrupt_image"


def test_oversized_png_is_refused_from_its_header_before_decoding():
    header = png_header(50_000, 50_000)
    data = header + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")
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
