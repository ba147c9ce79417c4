"""Where a run's images come from: its pool (rebuilt from the run's spec) or, for synthetic
queries that are in no pool (JBDA), the bytes stored in the transfer set's blob table."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from attacker.store import Run, image_format, pixels_digest, read_blobs, sent_image
from shared.datasets import ImageDataset
from shared.imaging import decode_image, encode_image

IMAGE_FORMAT = "png"
"""Lossless and deterministic: the same image always gives the same bytes and sha256."""
V2_IMAGE_FORMAT = "raw"
"""v2 sends the pixels themselves as a tensor: the sha256 is that of the array's bytes."""


class ImageSource(Protocol):
    def payloads(self, indices: Sequence[int]) -> tuple[np.ndarray, list[bytes]]:
        """The images as sent and their encoded bytes."""
        ...

    def reference(self, index: int) -> str:
        """A reloadable reference stored with each answer."""
        ...


class PoolSource:
    """Pool images, resized as the run sends them and encoded in the run's format (PNG for
    v1, the raw pixels for v2)."""

    def __init__(self, run: Run, pool: ImageDataset) -> None:
        self.run, self.pool = run, pool
        self.format = image_format(run)

    def payloads(self, indices: Sequence[int]) -> tuple[np.ndarray, list[bytes]]:
        images = np.stack([sent_image(self.run, self.pool, i) for i in indices])
        return images, [encode_image(image, self.format) for image in images]

    def reference(self, index: int) -> str:
        return self.pool.reference(index)


class BlobSource:
    """Stored images: index = plan position; the bytes sent are the bytes stored."""

    def __init__(self, factory: sessionmaker[Session], plan: Mapping[int, str]) -> None:
        self.factory, self.plan = factory, dict(plan)

    def payloads(self, indices: Sequence[int]) -> tuple[np.ndarray, list[bytes]]:
        with self.factory() as session:
            blobs = read_blobs(session, [self.plan[i] for i in indices])
        data = [blobs[self.plan[i]] for i in indices]
        return np.stack([decode_image(d) for d in data]), data

    def reference(self, index: int) -> str:
        return f"blob:{self.plan[index]}"


def prepare(
    source: ImageSource, indices: Sequence[int]
) -> tuple[np.ndarray, list[bytes], list[str], list[str]]:
    """The images as sent, their bytes, the bytes' sha256 and the pixels' digest (run off the
    event loop)."""
    images, payloads = source.payloads(indices)
    digests = [hashlib.sha256(p).hexdigest() for p in payloads]
    return images, payloads, digests, [pixels_digest(image) for image in images]
