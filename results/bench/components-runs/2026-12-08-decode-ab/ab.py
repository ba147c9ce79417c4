"""`decode_image` of two revisions side by side, alternated in one process: the files a client
sends (`encode_png`: every row Up), Pillow's (adaptive filters, Paeth among them) and larger
ones. Usage, from the project root:

    .venv/bin/python results/bench/components-runs/2026-12-08-decode-ab/ab.py 9ce616e \
        --json results/bench/components-runs/2026-12-08-decode-ab/ab.json

`base` is shared/imaging.py at the given revision, `new` the working tree's. Medians of the
rounds' microseconds of CPU per image (process time)."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from benchmarks.common import base_and_new, machine, module_at  # noqa: E402
from shared import imaging as new  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("revision")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = module_at(args.revision, "shared/imaging.py")
    photos = [load_dataset("natural", size=32, image_size=32).image(i) for i in range(32)]
    large = [np.asarray(Image.fromarray(p).resize((224, 224))) for p in photos[:4]]
    cases = {
        "encode_png_32px": ([new.encode_png(p) for p in photos], 60),
        "pillow_32px": ([pillow_png(p) for p in photos], 60),
        "encode_png_224px": ([new.encode_png(p) for p in large], 20),
    }
    results = {}
    for name, (payloads, number) in cases.items():
        for data in payloads:  # both read the same pixels
            assert np.array_equal(base.decode_image(data), new.decode_image(data))
        r = results[name] = base_and_new(
            lambda m, p=payloads, k=number: cpu_us_per_image(m.decode_image, p, k),
            base, new, args.rounds,
        )  # fmt: skip
        print(f"{name:18s} base {r['base_us']:7.1f} us  new {r['new_us']:7.1f} us  "
              f"new/base {r['new_over_base']:.2f}")  # fmt: skip
    out = {"base_revision": args.revision, "results": results, **machine()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
