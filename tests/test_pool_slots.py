"""The `natural` pools' images kept on disk (`shared.datasets.slots`): read back exactly, never
returned when torn, of another photograph or of older code, and never a reason to fail."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.datasets import load_dataset
from shared.datasets.generated import NATURAL_CACHE, NaturalPool
from shared.datasets.slots import HEADER, SlotFile, slot_key


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder and an empty in-memory cache: every image comes from disk or is
    made."""
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path))
    NATURAL_CACHE.clear()
    yield tmp_path
    NATURAL_CACHE.clear()


def _unmakeable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: NaturalPool, index: int) -> np.ndarray:
        raise AssertionError(f"image {index} was made again instead of read from disk")

    monkeypatch.setattr(NaturalPool, "_make", refuse)


def test_a_pool_made_once_is_read_back_from_disk_pixel_for_pixel(fresh, monkeypatch):
    """Another process's pool (a new object, an empty memory cache) reads what the first made,
    whatever its size: image i depends on (seed, i) and its photograph alone."""
    made = load_dataset("natural", size=40, image_size=32, seed=5)
    images = [made.image(i) for i in range(40)]
    assert made.slots is not None and made.slots.path.parent == fresh / "pools"
    NATURAL_CACHE.clear()
    _unmakeable(monkeypatch)
    again = load_dataset("natural", size=40, image_size=32, seed=5)
    for i in range(40):
        np.testing.assert_array_equal(again.image(i), images[i])
    smaller = load_dataset("natural", size=25, image_size=32, seed=5)
    same_photo = [i for i in range(25) if smaller.targets[i] == made.targets[i]]
    assert same_photo
    for i in same_photo:
        np.testing.assert_array_equal(smaller.image(i), images[i])


def test_a_torn_or_foreign_slot_is_made_again_never_returned(fresh):
    made = load_dataset("natural", size=6, image_size=16, seed=1)
    images = [made.image(i) for i in range(6)]
    slots = made.slots
    assert slots is not None
    with open(slots.path, "r+b") as file:  # a killed writer's slot 2, a flipped bit in slot 3
        file.seek(2 * slots.slot_bytes + HEADER + 100)
        file.write(b"\0" * 40)
        file.seek(3 * slots.slot_bytes + HEADER + 7)
        byte = file.read(1)
        file.seek(3 * slots.slot_bytes + HEADER + 7)
        file.write(bytes([byte[0] ^ 1]))

    def key(i: int, photo: int | None = None) -> bytes:
        return slot_key(made.seed, 16, int(made.targets[i]) if photo is None else photo)

    assert slots.get(2, key(2)) is None and slots.get(3, key(3)) is None
    assert slots.get(4, key(4, int(made.targets[4]) + 1)) is None  # another photograph's
    assert slots.get(50, key(4)) is None  # past the end: never written
    np.testing.assert_array_equal(slots.get(4, key(4)), images[4])
    NATURAL_CACHE.clear()
    again = load_dataset("natural", size=6, image_size=16, seed=1)
    for i in range(6):
        np.testing.assert_array_equal(again.image(i), images[i])
    assert slots.get(2, key(2)) is not None  # made again and kept


def test_a_pool_given_another_seed_never_reads_the_first_seeds_images(fresh):
    """`dataclasses.replace(pool, seed=...)` keeps the first pool's file: each slot's key names
    the seed, so the second pool makes its own images."""
    first = load_dataset("natural", size=5, image_size=16, seed=0)
    images = [first.image(i) for i in range(5)]
    other = replace(first, seed=first.seed + 2)
    assert other.slots is first.slots
    NATURAL_CACHE.clear()
    unkept = replace(other, slots=None, cache=None)
    for i in range(5):
        np.testing.assert_array_equal(other.image(i), unkept.image(i))
        assert not np.array_equal(other.image(i), images[i])


def test_older_code_or_another_pillow_keeps_its_own_file(fresh, monkeypatch):
    from shared.datasets import generated

    first = load_dataset("natural", size=2, image_size=16, seed=0).slots
    monkeypatch.setattr(generated, "SYNTHESIS_REVISION", generated.SYNTHESIS_REVISION + 1)
    revised = load_dataset("natural", size=2, image_size=16, seed=0).slots
    assert first is not None and revised is not None and first.path != revised.path
    assert "pillow" in first.path.name


def test_keeping_pools_can_be_switched_off(fresh, monkeypatch):
    monkeypatch.setenv("TESTBED_KEEP_POOLS", "0")
    pool = load_dataset("natural", size=3, image_size=16, seed=0)
    assert pool.slots is None and pool.image(2).shape == (16, 16, 3)
    assert not (fresh / "pools").exists()


def test_a_folder_that_cannot_be_made_costs_one_line_and_nothing_else(fresh, capfd):
    (fresh / "pools").write_text("a file where the folder should be")  # refused even to root
    pool = load_dataset("natural", size=4, image_size=16, seed=0)
    assert [pool.image(i).shape for i in range(4)] == [(16, 16, 3)] * 4
    err = capfd.readouterr().err
    assert err.count("pool images are not kept on disk: cannot open") == 1, err


def test_a_full_disk_turns_the_store_off_and_the_pool_goes_on(fresh):
    """A file-size limit makes `pwrite` fail as a full disk does (EFBIG rather than ENOSPC);
    a mapped file would have died of SIGBUS there."""
    code = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))\n"
        "from shared.datasets import load_dataset\n"
        "pool = load_dataset('natural', size=8, image_size=32, seed=0)\n"
        "print(sum(pool.image(i).shape == (32, 32, 3) for i in range(8)))\n"
    )
    env = {**os.environ, "TESTBED_CACHE_DIR": str(fresh)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "8"
    assert done.stderr.count("pool images are not kept on disk: cannot write to") == 1
    assert "Traceback" not in done.stderr


def test_a_slot_refuses_an_image_of_another_shape(tmp_path):
    slots = SlotFile(tmp_path / "x.slots", (4, 4, 3))
    with pytest.raises(ValueError, match="holds a"):
        slots.put(0, slot_key(0), np.zeros((5, 4, 3), np.uint8))
    slots.put(1, slot_key(7), np.full((4, 4, 3), 9, np.uint8))
    assert slots.get(0, slot_key(0)) is None and int(slots.get(1, slot_key(7))[0, 0, 0]) == 9


def test_a_failed_write_turns_the_store_off_once_and_keeps_its_descriptor(
    tmp_path, monkeypatch, capfd
):
    """Threads that fail their writes at once say so once, and the file stays open until
    `close`: closed under another thread's write, its number could go to a file opened
    meanwhile (the transfer set's), and that write would land there."""
    import errno
    from concurrent.futures import ThreadPoolExecutor

    from shared.datasets import slots as module

    store = SlotFile(tmp_path / "x.slots", (4, 4, 3))
    image = np.zeros((4, 4, 3), np.uint8)
    store.put(0, slot_key(0), image)
    fd = store._fd
    assert fd is not None

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(module.os, "pwrite", full)
    with ThreadPoolExecutor(8) as threads:
        list(threads.map(lambda i: store.put(i, slot_key(i), image), range(1, 64)))
    err = capfd.readouterr().err
    assert err.count("pool images are not kept on disk: cannot write to") == 1, err
    assert "No space left on device" in err
    os.fstat(fd)  # still open: no other file can have taken its number
    assert store.get(0, slot_key(0)) is None  # off: neither read nor written
    store.close()
    assert store._fd is None
