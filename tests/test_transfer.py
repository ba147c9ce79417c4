"""Reading a transfer set back: the run's output mode decides the loss, and images are checked
against what was sent (its pixels, or for older runs its bytes) before anyone trains on them."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from attacker.export import export_run
from attacker.store import Query, Run, open_store, pixels_digest, sent_image
from attacker.transfer import answers_digest, load_transfer_set
from shared.datasets import load_dataset
from shared.errors import TestbedError
from shared.imaging import encode_image, encode_png_pillow


def _digest(image: np.ndarray) -> str:
    return _digest_bytes(encode_image(image))


def _digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _other_encoders_digest(image: np.ndarray) -> str:
    """The sha256 of the same pixels as another PNG encoder writes them (zlib-ng's output, say,
    differs by version and CPU): here Pillow at compression level 9."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=9)
    assert buffer.getvalue() != encode_image(image)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _write_run(
    db,
    answers: list[dict],
    output_mode: str = "probs",
    sha: list[str] | None = None,
    pixels: list[str | None] | None = None,
):
    """A run over the first len(answers) images of a small natural pool, stored as sent (with
    no pixel digests unless given, as runs stored before them)."""
    pool = load_dataset("natural", size=40, image_size=32, seed=0)
    with open_store(db)() as session:
        run = Run(victim_url="in-process", pool="natural", pool_size=40, pool_image_size=32,
                  strategy="random", budget=len(answers), seed=0, batch_size=8,
                  output_mode=output_mode, num_outputs=4, input_size=32,
                  params={"send_size": 32, "image_format": "png"})  # fmt: skip
        session.add(run)
        session.flush()
        for i, answer in enumerate(answers):
            digest = sha[i] if sha else _digest(sent_image(run, pool, i))
            session.add(Query(run_id=run.id, position=i, pool_index=i, reference=f"natural#{i}",
                              sha256=digest, pixels_sha256=pixels[i] if pixels else None,
                              answer=answer, label=0, latency_ms=0.0))  # fmt: skip
        session.commit()


def test_the_training_mode_is_the_runs_output_mode_not_the_first_answers(tmp_path):
    """A probabilities run whose first answer was flagged label-only (the `label` action)
    still trains on soft labels; the flagged row is a hard label inside it."""
    probs = {"probabilities": [0.1, 0.6, 0.2, 0.1]}
    db = tmp_path / "t.sqlite"
    _write_run(db, [{"label": 3}] + [probs] * 11)
    transfer = load_transfer_set(db)
    assert transfer.mode == "probs"
    assert transfer.targets[0, 0].tolist() == [0, 0, 0, 1]
    assert np.allclose(transfer.targets[1, 0].numpy(), [0.1, 0.6, 0.2, 0.1])
    assert transfer.labels.tolist() == [3] + [1] * 11


def test_a_pool_that_changed_since_the_run_is_refused_before_training(tmp_path):
    db = tmp_path / "t.sqlite"
    answers = [{"probabilities": [0.1, 0.6, 0.2, 0.1]}] * 12
    pool = load_dataset("natural", size=40, image_size=32, seed=0)
    digests = [_digest(pool.image(i)) for i in range(12)]
    digests[5] = _digest(pool.image(30))  # what was sent at position 5 is not pool image 5 now
    _write_run(db, answers, sha=digests)
    with pytest.raises(TestbedError, match="position 5.*sha256"):
        load_transfer_set(db)
    assert len(load_transfer_set(db, budget=5).images) == 5  # the prefix before it is intact
    pixels = [pixels_digest(pool.image(i)) for i in range(12)]
    pixels[7] = pixels_digest(pool.image(31))
    _write_run(db := tmp_path / "pixels.sqlite", answers, pixels=pixels)
    with pytest.raises(TestbedError, match=r"image 7 .*position 7 \(its pixels differ\)"):
        load_transfer_set(db)
    assert len(load_transfer_set(db, budget=7).images) == 7


def test_a_run_sent_by_another_png_encoder_trains_on_the_same_pixels(tmp_path):
    """The bytes sent are not what this machine's encoder makes of the same pixels: the run's
    pixel digests vouch for them, and its knockoff's cache key (the answers' digest, made of
    the stored sha256) is the one it had where it was gathered."""
    answers = [{"probabilities": [0.1, 0.6, 0.2, 0.1]}] * 12
    pool = load_dataset("natural", size=40, image_size=32, seed=0)
    images = [pool.image(i) for i in range(12)]
    other = [_other_encoders_digest(image) for image in images]
    pixels = [pixels_digest(image) for image in images]
    db = tmp_path / "other.sqlite"
    _write_run(db, answers, sha=other, pixels=pixels)
    key = answers_digest(db)
    transfer = load_transfer_set(db)
    assert np.array_equal(transfer.images.permute(0, 2, 3, 1).numpy(), np.stack(images))
    assert answers_digest(db) == key
    export_run(db, tmp_path / "export")
    exported = json.loads((tmp_path / "export" / "answers.json").read_text())["queries"]
    assert [e["sha256"] for e in exported] == other  # as sent
    assert [e["pixels_sha256"] for e in exported] == pixels
    for entry, image in zip(exported, images, strict=True):
        file = np.asarray(Image.open(tmp_path / "export" / entry["file"]))
        assert np.array_equal(file, image)
    # the same run stored before pixel digests: only bytes can be compared, and they differ
    _write_run(old := tmp_path / "old.sqlite", answers, sha=other)
    with pytest.raises(TestbedError, match="position 0 .*PNG encoder compresses differently"):
        load_transfer_set(old)


def test_a_run_sent_before_pixel_digests_by_pillows_encoder_still_loads_and_exports(tmp_path):
    """Until `encode_png`, the attacker's PNGs were Pillow's: a run of that time, stored before
    pixel digests, is checked by Pillow's bytes, and its export holds the very bytes it sent."""
    answers = [{"probabilities": [0.1, 0.6, 0.2, 0.1]}] * 6
    pool = load_dataset("natural", size=40, image_size=32, seed=0)
    images = [pool.image(i) for i in range(6)]
    pillow = [encode_png_pillow(image) for image in images]
    assert pillow[0] != encode_image(images[0])  # the two encoders' bytes differ
    _write_run(db := tmp_path / "pillow.sqlite", answers, sha=[_digest_bytes(d) for d in pillow])
    assert np.array_equal(
        load_transfer_set(db).images.permute(0, 2, 3, 1).numpy(), np.stack(images)
    )
    export_run(db, tmp_path / "export")
    exported = json.loads((tmp_path / "export" / "answers.json").read_text())["queries"]
    assert [(tmp_path / "export" / e["file"]).read_bytes() for e in exported] == pillow


def test_the_pixel_digest_is_the_shape_and_the_bytes():
    image = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)  # 1 x 2 pixels
    expected = hashlib.sha256(b"1x2x3:" + bytes([1, 2, 3, 4, 5, 6])).hexdigest()
    assert pixels_digest(image) == expected
    assert pixels_digest(image.reshape(2, 1, 3)) != expected  # the same bytes, another shape
    assert pixels_digest(np.asfortranarray(image.reshape(2, 1, 3))) == pixels_digest(
        image.reshape(2, 1, 3)
    )


def test_malformed_stored_answers_are_named_by_position(tmp_path):
    db = tmp_path / "t.sqlite"
    answers = [{"probabilities": [0.1, 0.6, 0.2, 0.1]}] * 11 + [
        {"top_k": [{"index": 9, "probability": 0.5}]}
    ]
    _write_run(db, answers)
    with pytest.raises(TestbedError, match="position 11.*out of range"):
        load_transfer_set(db)
