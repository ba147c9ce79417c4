"""A generated pool's images kept on disk once made, so that the next process reads them back.

Making a `natural` image costs about 0.8 ms of CPU at 32 px, more than the victim's forward pass
(`benchmarks.attack`); an attacker who queries, resumes, exports and trains on the same seeded
pool, in several processes, made each image again in each. `SlotFile` keeps them: one sparse file
per pool, image `i` in slot `i`, read and written with `pread`/`pwrite` (no mapping: a full disk
is an `OSError` to skip, where a write into a mapped file would kill the process with SIGBUS).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"TBS2"
HEADER = 16
"""MAGIC, the image's 8-byte key and the CRC-32 of key and pixels, in front of each slot."""


class SlotFile:
    """Fixed-size slots of `shape` uint8 images, each behind a header that proves it whole.

    A slot never written reads as zeros (no MAGIC); one cut short by a killed process, or holding
    an image of another key (what the image was made from: its seed, size and photograph), fails
    its check: either is made again, never returned. Writers of the same slot write the same
    bytes, so processes and threads share a file without a lock. A file that cannot be opened or
    written (read-only folder, full disk) turns the store off with one line on stderr; the pool
    goes on making its images."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path = path
        self.shape = shape
        self.image_bytes = int(np.prod(shape))
        self._fd: int | None = None
        self._off = False
        self._lock = threading.RLock()  # `_open` turns the store off under it

    @property
    def slot_bytes(self) -> int:
        return HEADER + self.image_bytes

    def get(self, index: int, key: bytes) -> np.ndarray | None:
        """Slot `index`'s image if it holds a whole one made from `key`, else None (read-only)."""
        fd = self._open()
        if fd is None:
            return None
        try:
            data = os.pread(fd, self.slot_bytes, index * self.slot_bytes)
        except OSError:
            return None
        if len(data) != self.slot_bytes or data[:4] != MAGIC:
            return None
        if data[4:12] != key:
            return None
        if int.from_bytes(data[12:16], "little") != zlib.crc32(data[HEADER:], zlib.crc32(key)):
            return None
        return np.frombuffer(data, np.uint8, offset=HEADER).reshape(self.shape)

    def put(self, index: int, key: bytes, image: np.ndarray) -> None:
        """Write `image` into slot `index`; a failed write turns the store off, nothing else."""
        fd = self._open()
        if fd is None:
            return
        if image.shape != self.shape or image.dtype != np.uint8 or len(key) != 8:
            raise ValueError(f"a slot holds a {self.shape} uint8 image under an 8-byte key")
        pixels = np.ascontiguousarray(image).tobytes()
        crc = zlib.crc32(pixels, zlib.crc32(key)).to_bytes(4, "little")
        try:
            os.pwrite(fd, MAGIC + key + crc + pixels, index * self.slot_bytes)
        except OSError as exc:
            self._turn_off(f"cannot write to {self.path} ({exc.strerror or exc})")

    def _open(self) -> int | None:
        if self._fd is None and not self._off:
            with self._lock:
                if self._fd is None and not self._off:
                    try:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                    except OSError as exc:
                        self._turn_off(f"cannot open {self.path} ({exc.strerror or exc})")
        return None if self._off else self._fd

    def _turn_off(self, why: str) -> None:
        """Stop using the file, saying so once. It stays open until `close`: closing it while
        another thread reads or writes could give its number to a file opened meanwhile (the
        transfer set's), which that thread's write would then land in."""
        with self._lock:
            if self._off:
                return
            self._off = True
        print(f"pool images are not kept on disk: {why}; they are made as needed",
              file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def slot_key(*parts: object) -> bytes:
    """The 8-byte key of an image made from `parts` (a pool's seed, size, photograph)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
