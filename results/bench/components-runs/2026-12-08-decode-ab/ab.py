"""`decode_image` of two revisions side by side, alternated in one process: the files a client
sends (`encode_png`: every row Up), Pillow's (adaptive filters, Paeth among them) and larger
ones. Usage, from the project root:

    .venv/bin/python results/bench/components-runs/2026-12-08-decode-ab/ab.py 9ce616e \
        --json results/bench/components-runs/2026-12-08-decode-ab/ab.json

`base` is shared/imaging.py at the given revision, `new` the working tree's. Medians of the
rounds' microseconds of CPU per image (process time)."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from benchmarks.common import revision_ab  # noqa: E402
from shared.datasets import load_dataset  # noqa: E402


def pillow_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def cpu_us_per_image(decode, payloads: list[bytes], number: int) -> float:
    start = time.process_time()
    for _ in range(number):
        for data in payloads:
            decode(data)
    return (time.process_time() - start) / number / len(payloads) * 1e6


def cases(base, new) -> dict:
    photos = [load_dataset("natural", size=32, image_size=32).image(i) for i in range(32)]
    large = [np.asarray(Image.fromarray(p).resize((224, 224))) for p in photos[:4]]
    files = {
        "encode_png_32px": ([new.encode_png(p) for p in photos], 60),
        "pillow_32px": ([pillow_png(p) for p in photos], 60),
        "encode_png_224px": ([new.encode_png(p) for p in large], 20),
    }
    for payloads, _ in files.values():
        for data in payloads:  # both read the same pixels
            assert np.array_equal(base.decode_image(data), new.decode_image(data))
    return {
        name: lambda m, p=payloads, k=number: cpu_us_per_image(m.decode_image, p, k)
        for name, (payloads, number) in files.items()
    }


if __name__ == "__main__":
    revision_ab("shared/imaging.py", cases, rounds=9)
