"""CPU per 32-image request of each serving and querying step, one at a time, in this process.

    python -m benchmarks.components --json out.json

CPU time (not wall time) of the steps the HTTP figures are made of: reading a multipart body
(Starlette's parser vs the fast path), decoding 32 PNGs (as served, and through Pillow alone;
noise and photographs, each as `encode_png` and as Pillow's encoder wrote them), reading a v2
binary tensor, encoding the JSON answer (standard library vs orjson), and the model's batched
forward pass; on the attacker's side, encoding 32 PNGs (`encode_png` against Pillow's encoder,
which it replaced), making 32 `natural` pool images and reading 32 back from the disk where the
pool keeps them, making 32 `noise` images (`noise_pixels` against the `integers` call it
replaced), parsing 32 answers, and storing 32 answered rows in a transfer
set (through the table, against the ORM's bulk insert); and the two PNG encoders' file sizes.
CPU time moves less than throughput on a loaded machine, which makes these the figures to
compare changes with when the machine is shared; they still grow under heavy contention.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import orjson
import typer
from starlette.requests import Request

from attacker.client import multipart_body
from benchmarks.common import machine, sample_images, sample_payloads, throwaway_victim, write_json
from benchmarks.loadgen import v2_requests
from shared.cli import friendly
from shared.datasets import NaturalPool, load_dataset
from shared.datasets.slots import SlotFile
from shared.imaging import decode_with_pillow, encode_png, encode_png_pillow
from shared.inference_protocol import BinaryReader, decode_tensor, parse_request
from shared.schemas import parse_answer
from victim_service.app import decode_all, load_blackbox
from victim_service.multipart import boundary_of, split_images
from victim_service.settings import VictimSettings


def cpu_us(fn, repeats: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1e6


def _starlette_form(body: bytes, content_type: str):
    async def parse():
        sent = False

        async def receive():
            nonlocal sent
            chunk, sent = (b"" if sent else body), True
            return {"type": "http.request", "body": chunk, "more_body": False}

        headers = [(b"content-type", content_type.encode())]
        request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
        form = await request.form(max_files=300, max_fields=300)
        parts = [await p.read() for p in form.getlist("images")]
        await form.close()
        return parts

    return asyncio.run(parse())


def _transfer_set_writes(repeats: int) -> dict[str, float]:
    """CPU to commit 32 answered rows (10 probabilities each), as the attacker's writer does,
    and the same through the ORM's bulk insert (what it did until 2026-12-07)."""
    from sqlalchemy import insert

    from attacker.store import Query, Run, open_store, utcnow
    from attacker.writer import _write

    with tempfile.TemporaryDirectory() as tmp:
        factory = open_store(Path(tmp) / "t.sqlite")
        with factory() as session, session.begin():
            run = Run(victim_url="bench", pool="noise", pool_size=1, pool_image_size=32,
                      strategy="random", budget=1, seed=0, batch_size=32)  # fmt: skip
            session.add(run)
            session.flush()
            run_id = run.id
        positions = iter(range(10**9))

        def rows() -> list[dict]:
            now = utcnow()
            return [dict(run_id=run_id, position=(n := next(positions)), pool_index=n,
                         reference="noise#0", sha256="0" * 64, pixels_sha256="0" * 64,
                         answer={"probabilities": [0.1] * 10}, label=0, latency_ms=1.0,
                         created_at=now) for _ in range(32)]  # fmt: skip

        def orm(batch: list[dict]) -> None:
            with factory() as session, session.begin():
                session.execute(insert(Query), batch)

        return {
            "transfer_set_write": cpu_us(lambda: _write(factory, rows()), repeats),
            "transfer_set_write_orm": cpu_us(lambda: orm(rows()), repeats),
        }


def _png_sizes() -> dict[str, float]:
    """Mean bytes of a `natural` photograph as a PNG, at 32 and 64 px, from each encoder."""
    sizes = {}
    for side in (32, 64):
        pool = load_dataset("natural", size=64, image_size=side)
        images = [pool.image(i) for i in range(64)]
        for name, encode in (("encode_png", encode_png), ("pillow", encode_png_pillow)):
            sizes[f"{name}_{side}px"] = sum(len(encode(im)) for im in images) / len(images)
    return sizes


def _noise_integers(index: int) -> np.ndarray:
    """A `noise` pool image as the pool made it before `noise_pixels`: the same bytes."""
    rng = np.random.default_rng([0, index, 7])
    return rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def _kept_reads(natural: NaturalPool, repeats: int) -> float:
    """Reading 32 `natural` images back from their slots on disk (the pool kept once made)."""
    with tempfile.TemporaryDirectory() as folder:
        slots = SlotFile(Path(folder) / "natural.slots", (natural.side, natural.side, 3))
        kept = replace(natural, cache=None, slots=slots)
        made = [kept.image(i) for i in range(32)]  # the first reads miss, make and keep
        assert all(np.array_equal(kept.image(i), made[i]) for i in range(32))
        return cpu_us(lambda: [kept.image(i) for i in range(32)], repeats)


def main(
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
    repeats: Annotated[int, typer.Option(min=1)] = 200,
) -> None:
    payloads = sample_payloads(32)
    body, content_type = multipart_body(payloads)
    _, v2_body, v2_headers = v2_requests(sample_images(64), 32)(0)
    answer = {"output": "probs", "predictions": [{"probabilities": [0.1] * 10}] * 32}
    natural = load_dataset("natural", size=32, image_size=32)
    noise = load_dataset("noise", size=32, image_size=32)
    # 32 answers as a v1 response's JSON holds them: softmax outputs, full float precision
    logits = np.random.default_rng(0).normal(size=(32, 10))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    answers = json.loads(json.dumps([{"probabilities": row} for row in softmax.tolist()]))
    photos = [natural.image(i) for i in range(32)]  # the attacker's PNGs are of photographs
    # the same pixels from Pillow's encoder, which the clients used before `encode_png`
    pillow_payloads = [encode_png_pillow(im) for im in sample_images(32)]
    photo_payloads = [encode_png(im) for im in photos]
    photo_pillow_payloads = [encode_png_pillow(im) for im in photos]
    empty_loop = cpu_us(lambda: asyncio.run(asyncio.sleep(0)), repeats)

    def v2_read():
        request, binary = parse_request(v2_body, v2_headers["Inference-Header-Content-Length"])
        return decode_tensor(request.inputs[0], BinaryReader(binary))

    with tempfile.TemporaryDirectory() as tmp:
        box = load_blackbox(VictimSettings(checkpoint=throwaway_victim(Path(tmp) / "v.pt")))
        images = sample_images(32)
        model_us = cpu_us(lambda: box.answer(images), max(repeats // 10, 5))
    results = {
        "cpu_us_per_32_image_request": {
            "multipart_starlette": cpu_us(lambda: _starlette_form(body, content_type), repeats)
            - empty_loop,
            "multipart_fast_path": cpu_us(
                lambda: split_images(body, boundary_of(content_type), 64), repeats
            ),
            "png_decode": cpu_us(lambda: decode_all(payloads, 1 << 24, 32), repeats),
            "png_decode_pillow_encoded": cpu_us(
                lambda: decode_all(pillow_payloads, 1 << 24, 32), repeats
            ),
            "png_decode_photographs": cpu_us(
                lambda: decode_all(photo_payloads, 1 << 24, 32), repeats
            ),
            "png_decode_photographs_pillow_encoded": cpu_us(
                lambda: decode_all(photo_pillow_payloads, 1 << 24, 32), repeats
            ),
            "png_decode_pillow_only": cpu_us(
                lambda: [decode_with_pillow(p, 1 << 24) for p in payloads], repeats
            ),
            "v2_binary_tensor_read": cpu_us(v2_read, repeats),
            "json_encode_stdlib": cpu_us(lambda: json.dumps(answer).encode(), repeats),
            "json_encode_orjson": cpu_us(lambda: orjson.dumps(answer), repeats),
            "model_forward_and_pipeline": model_us,
        },
        "attacker_cpu_us_per_32_image_request": {
            "png_encode": cpu_us(lambda: [encode_png(im) for im in photos], repeats),
            "png_encode_pillow": cpu_us(lambda: [encode_png_pillow(im) for im in photos], repeats),
            "natural_pool_synthesis": cpu_us(
                lambda: [natural._make(i) for i in range(32)], max(repeats // 10, 5)
            ),
            "natural_pool_read_kept": _kept_reads(natural, repeats),
            "noise_pool": cpu_us(lambda: [noise._load(i) for i in range(32)], repeats),
            "answers_parse": cpu_us(lambda: [parse_answer(a, 10) for a in answers], repeats),
            "noise_pool_integers": cpu_us(lambda: [_noise_integers(i) for i in range(32)], repeats),
            **_transfer_set_writes(repeats),
        },
        "png_bytes_per_photograph": _png_sizes(),
        "note": "multipart_starlette excludes the cost of asyncio.run itself "
        f"({empty_loop:.0f} µs, measured the same way)",
        "torch_threads": __import__("torch").get_num_threads(),
        **machine(),
    }
    write_json(json_out, results)


if __name__ == "__main__":
    typer.run(friendly(main))
