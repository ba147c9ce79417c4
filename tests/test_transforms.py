"""Attacker-side transforms and the defender's random encodings (shared/transforms.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.checkpoint import load_checkpoint
from shared.datasets import load_dataset
from shared.errors import TestbedError
from shared.imaging import encode_image
from shared.training import predict_logits, to_tensor
from shared.transforms import (
    DEFAULT_ATTACK_TRANSFORMS,
    jpeg_quality,
    parse_transform,
    random_encoding,
    random_encodings,
)


def test_each_transform_changes_the_bytes_but_not_what_the_victim_sees(victim_checkpoint):
    """A known image stays recognisable: the victim's label survives every transform."""
    model, card = load_checkpoint(victim_checkpoint)
    test = load_dataset("digits", "test", image_size=64)  # sources larger than the victim's 32
    sources = test.arrays(64)[:120]
    targets = np.asarray(test.targets)[:120]
    none = parse_transform("none")
    clean = none.apply_many(sources, card.input_size)
    device = torch.device("cpu")
    labels = predict_logits(model, to_tensor(clean), device, amp=False).argmax(1).numpy()
    known = labels == targets
    assert known.mean() > 0.9
    for spec in DEFAULT_ATTACK_TRANSFORMS:
        t = parse_transform(spec)
        payloads = [t.payload(im, card.input_size, in_quality=75) for im in sources[:5]]
        reference = [
            none.payload(im, card.input_size) if spec != "none" else encode_image(im)
            for im in sources[:5]
        ]
        assert all(p != r for p, r in zip(payloads, reference, strict=True)), spec
        seen = t.apply_many(sources, card.input_size, in_quality=75)
        assert seen.shape == clean.shape
        if spec not in ("none", "png"):
            assert np.abs(seen.astype(int) - clean).mean() > 0.05, spec  # pixels change too
        moved = predict_logits(model, to_tensor(seen), device, amp=False).argmax(1).numpy()
        kept = float(np.mean(moved[known] == labels[known]))
        assert kept >= 0.9, (spec, kept)


def test_match_in_imitates_the_in_distribution_pipeline():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    t = parse_transform("match-in")
    assert jpeg_quality(t.payload(image, 32, in_quality=60)) == 60
    # a lossless in-distribution: the attacker sends lossless images too
    assert jpeg_quality(t.payload(image, 32, in_quality=None)) is None


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_quality_is_read_off_the_quantization_tables(quality):
    image = np.random.default_rng(quality).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert jpeg_quality(encode_image(image, "jpeg", quality=quality)) == quality
    assert jpeg_quality(encode_image(image, "png")) is None


@pytest.mark.parametrize(
    "spec", ["sepia", "jpeg", "jpeg:", "jpeg:abc", "jpeg:0", "jpeg:101", "jpeg:7.5",
             "resize:1", "blur:0", "blur:-1", "png:3", "none:1"],
)  # fmt: skip
def test_bad_transform_specs_are_refused_with_a_clear_message(spec):
    with pytest.raises(TestbedError) as info:
        parse_transform(spec)
    assert spec.strip() in str(info.value) and "\n" not in str(info.value)


def test_random_encodings_are_seeded_varied_and_sized():
    images = np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    a = random_encodings(images, 32, seed=3)
    b = random_encodings(images, 32, seed=3)
    c = random_encodings(images, 32, seed=4)
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # not one fixed pipeline: the same image comes out differently under different draws
    outs = {random_encoding(images[0], 32, np.random.default_rng(s)).tobytes() for s in range(20)}
    assert len(outs) > 10


def test_match_in_share_of_random_encodings_goes_through_the_in_pipeline():
    """`match_in`: that share of images is first given the in-distribution's own pipeline
    (its side, its JPEG quality), so it differs from the plain draw; the rest are unchanged."""
    images = np.random.default_rng(2).integers(0, 256, (60, 64, 64, 3), dtype=np.uint8)
    plain = random_encodings(images, 32, seed=5)
    every = random_encodings(images, 32, seed=5, match_in=1.0, in_quality=30)
    half = random_encodings(images, 32, seed=5, match_in=0.5, in_quality=30)
    assert np.array_equal(half, random_encodings(images, 32, 5, match_in=0.5, in_quality=30))
    changed = [not np.array_equal(p, e) for p, e in zip(plain, every, strict=True)]
    assert np.mean(changed) > 0.9
    # JPEG q30 of noise loses most of its detail: the matched images are smoother
    assert (
        np.abs(np.diff(every.astype(int), axis=2)).mean()
        < np.abs(np.diff(plain.astype(int), axis=2)).mean()
    )
    share = np.mean([not np.array_equal(p, h) for p, h in zip(plain, half, strict=True)])
    assert 0.25 <= share <= 0.75, share
