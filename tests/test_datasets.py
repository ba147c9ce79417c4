import hashlib
import os
import struct
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.datasets import bundled_photos, dataset_names, load_dataset
from shared.datasets.generated import NATURAL_CACHE, ImageCache, noise_pixels
from shared.errors import MissingDataError, TestbedError, UnknownNameError


def test_digits_is_the_full_bundled_set_split_without_overlap():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert train.classes == [str(d) for d in range(10)]
    assert set(np.unique(test.targets)) == set(range(10))
    assert train.image(0).shape == (32, 32, 3) and train.image(0).dtype == np.uint8
    assert load_dataset("digits", image_size=48).image(0).shape == (48, 48, 3)
    assert not train.flip_invariant


def test_natural_pool_is_deterministic_any_size_and_labelled_by_photo():
    assert len(bundled_photos()) >= 20
    a = load_dataset("natural", size=50, image_size=40, seed=3)
    b = load_dataset("natural", size=5000, image_size=40, seed=3)
    assert len(a) == 50 and len(b) == 5000
    assert np.array_equal(a.image(7), b.image(7))
    assert a.image(7).shape == (40, 40, 3)
    other = load_dataset("natural", size=50, image_size=40, seed=4)
    assert not np.array_equal(a.image(7), other.image(7))
    assert not np.array_equal(a.image(7), a.image(8))
    assert a.classes == list(bundled_photos())
    assert a.targets.min() >= 0 and a.targets.max() < len(a.classes)
    assert a.reference(7) == "natural#7"
    assert a.arrays(16, [1, 2]).shape == (2, 16, 16, 3)


def test_natural_images_are_made_once_while_they_stay_in_a_bounded_cache():
    pool = load_dataset("natural", size=60, image_size=32, seed=5)
    assert pool.cache is NATURAL_CACHE
    made = []
    cache = ImageCache(max_bytes=10 * 32 * 32 * 3)  # ten images
    cached = replace(pool, cache=cache, slots=None)  # made here, not read from disk
    original = cached._make
    cached._make = lambda index: made.append(index) or original(index)
    uncached = replace(pool, cache=None)
    first = [cached.image(i) for i in range(20)]
    assert all(np.array_equal(image, uncached.image(i)) for i, image in enumerate(first))
    assert made == list(range(20)) and len(cache) == 10  # bounded by bytes
    assert cached.image(19) is first[19] and made == list(range(20))  # recent: not made again
    again = cached.image(0)  # the oldest went out: made again, the same pixels
    assert made[-1] == 0 and again is not first[0] and np.array_equal(again, first[0])
    assert not again.flags.writeable  # shared images cannot be changed by one reader
    with ThreadPoolExecutor(4) as threads:  # threads asking for the same images at once
        images = list(threads.map(cached.image, [i % 30 for i in range(120)]))
    assert all(np.array_equal(image, uncached.image(i % 30)) for i, image in enumerate(images))
    assert len(cache) <= 10
    cache.clear()
    assert len(cache) == 0 and cached.image(19) is not first[19]
    other = replace(pool, seed=pool.seed + 2, cache=cache)  # another pool, the same cache
    assert not np.array_equal(other.image(25), cached.image(25))


def test_the_pools_sklearn_photographs_are_those_load_sample_images_gives():
    """The pool reads them from scikit-learn's folder without importing it (5 s)."""
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    photos = bundled_photos()
    for filename, image in zip(samples.filenames, samples.images, strict=True):
        assert np.array_equal(photos[Path(filename).stem], image)
    assert list(photos)[-len(samples.images) :] == ["china", "flower"]


def test_the_pools_contrast_is_pillows():
    from PIL import ImageEnhance

    from shared.datasets.generated import _contrast

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), np.full((8, 8, 3), 200, np.uint8)]
    images += [rng.integers(lo, lo + 40, (32, 32, 3), dtype=np.uint8) for lo in (0, 100, 215)]
    for pixels in images:
        image = Image.fromarray(pixels)
        for factor in (0.0, 0.6, 1.0, 1.37, 1.8):
            expected = ImageEnhance.Contrast(image).enhance(factor)
            assert np.array_equal(np.asarray(_contrast(image, factor)), np.asarray(expected))


@pytest.mark.parametrize(
    ("side", "seed", "digest"),
    [
        (32, 0, "a44b9d3f611dab1dd2999ac39ec2ca2834e811de59a47be07ff08ed124d882a9"),
        (64, 3, "cff801799d1783923a1232f0c269c878278b0a8ad951b5af70b07a9395732475"),
    ],
)
def test_natural_pool_pixels_are_the_committed_results_pixels(side, seed, digest):
    """Every committed `natural` result was made from these pixels (digests taken before the
    synthesis was made faster): a change to them, by a rewrite or a new Pillow, must be seen,
    and `generated.SYNTHESIS_REVISION` bumped with the digests (the images kept on disk are
    named by it). Made here, not read from memory or disk."""
    pool = replace(load_dataset("natural", size=1000, image_size=side, seed=seed), cache=None,
                   slots=None)  # fmt: skip
    pixels = b"".join(pool.image(i).tobytes() for i in range(0, 1000, 10))
    assert hashlib.sha256(pixels).hexdigest() == digest


def test_noise_pool_is_uniform_random_pixels():
    pool = load_dataset("noise", size=20, image_size=32)
    pixels = np.concatenate([pool.image(i).ravel() for i in range(20)])
    assert pixels.min() == 0 and pixels.max() == 255
    assert abs(pixels.mean() - 127.5) < 3
    assert np.array_equal(pool.image(3), load_dataset("noise", size=20).image(3))


@pytest.mark.parametrize("shape", [(32, 32, 3), (1, 1, 3), (5, 7, 3), (224, 224, 3), (13,)])
@pytest.mark.parametrize("seed", [[0, 0, 7], [3, 12345, 7], [2**40, 1]])
def test_noise_pixels_are_numpys_uniform_integers_byte_for_byte(shape, seed):
    """The shortcut through PCG64's raw words changes the speed, not a byte: sizes that are not
    a whole number of 64-bit words included."""
    expected = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    got = noise_pixels(seed, shape)
    assert got.dtype == np.uint8 and got.shape == shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(("seed", "side"), [(0, 32), (5, 9)])
def test_noise_pool_images_are_the_formula_every_noise_result_was_made_with(seed, side):
    pool = load_dataset("noise", size=20, image_size=side, seed=seed)
    for index in (0, 7, 19):
        rng = np.random.default_rng([pool.seed, index, 7])  # the train split: seed * 2
        expected = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        assert np.array_equal(pool.image(index), expected)


def _write_tree(root: Path, classes=("cat", "dog"), per_class=3, side=12, seed=0) -> None:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.jpg")


def test_imagefolder_reads_any_tree(tmp_path: Path):
    _write_tree(tmp_path / "tree", per_class=5)
    ds = load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    assert ds.classes == ["cat", "dog"] and len(ds) == 8  # one image per class held out
    assert ds.image(3).shape == (12, 12, 3)
    assert ds.reference(3).endswith(".jpg")
    assert ds.arrays(8).shape == (8, 8, 8, 3)
    assert ds.flip_invariant


def test_a_file_in_the_tree_that_is_no_image_is_named_in_one_line(tmp_path: Path):
    """An attacker's pool with a stray or truncated file raised PIL's traceback mid-run."""
    _write_tree(tmp_path / "tree", per_class=5)
    good = sorted((tmp_path / "tree" / "cat").glob("*.jpg"))
    good[0].write_bytes(b"not an image at all")
    good[1].write_bytes(good[2].read_bytes()[:40])  # truncated
    ds = load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    for bad in good[:2]:
        index = [ds.reference(i) for i in range(len(ds))].index(str(bad))
        with pytest.raises(TestbedError, match=f"{bad} is not a readable image .*mend or remove"):
            ds.image(index)


def test_imagefolder_uses_its_train_and_test_folders(tmp_path: Path):
    """Defect 7: a tree with train/ and test/ was evaluated on its training images."""
    _write_tree(tmp_path / "tree" / "train", per_class=4)
    _write_tree(tmp_path / "tree" / "test", classes=("dog",), per_class=2)
    train = load_dataset(f"imagefolder:{tmp_path / 'tree'}", "train")
    test = load_dataset(f"imagefolder:{tmp_path / 'tree'}", "test")
    assert train.classes == test.classes == ["cat", "dog"]  # not ["test", "train"]
    assert len(train) == 8 and len(test) == 2
    assert all("/tree/train/" in train.reference(i) for i in range(len(train)))
    assert all("/tree/test/dog/" in test.reference(i) for i in range(len(test)))
    assert test.targets.tolist() == [1, 1]  # labelled by the training split's class order
    assert "tree/test" in test.split_note


def test_imagefolder_test_classes_unknown_to_training_are_refused(tmp_path: Path):
    _write_tree(tmp_path / "tree" / "train", classes=("cat",))
    _write_tree(tmp_path / "tree" / "test", classes=("cat", "emu"))
    with pytest.raises(TestbedError, match="emu"):
        load_dataset(f"imagefolder:{tmp_path / 'tree'}", "test")


def test_imagefolder_without_split_folders_holds_out_a_seeded_test_part(tmp_path: Path):
    _write_tree(tmp_path / "tree", classes=("a", "b", "c"), per_class=10)
    name = f"imagefolder:{tmp_path / 'tree'}"
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    train_paths = {train.reference(i) for i in range(len(train))}
    test_paths = {test.reference(i) for i in range(len(test))}
    assert not train_paths & test_paths and len(train_paths | test_paths) == 30
    assert np.bincount(test.targets).tolist() == [2, 2, 2]  # 20% of each class
    assert "held out" in test.split_note and "seed" in test.split_note
    again = load_dataset(name, "test", seed=5)  # the training seed does not move the test set
    assert [again.reference(i) for i in range(len(again))] == sorted(test_paths)


def test_imagefolder_too_small_to_hold_out_is_a_clear_error(tmp_path: Path):
    _write_tree(tmp_path / "tree", per_class=1)
    with pytest.raises(MissingDataError, match="too small"):
        load_dataset(f"imagefolder:{tmp_path / 'tree'}", "test")


def test_imagefolder_declares_itself_not_flip_invariant_by_a_marker_file(tmp_path: Path):
    _write_tree(tmp_path / "tree", per_class=5)
    (tmp_path / "tree" / ".no-flip").touch()
    ds = load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    assert not ds.flip_invariant and ds.classes == ["cat", "dog"]


def test_victim_training_on_a_tree_says_where_its_test_split_came_from_and_obeys_no_flip(
    tmp_path: Path,
):
    from typer.testing import CliRunner

    from shared.checkpoint import load_checkpoint
    from victim_service.cli import app

    _write_tree(tmp_path / "tree", per_class=5, side=16)
    out = tmp_path / "v.pt"
    args = ["train", "--dataset", f"imagefolder:{tmp_path / 'tree'}", "--arch", "cnn5",
            "--epochs", "1", "--input-size", "16", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--no-flip"])
    assert result.exit_code == 0, result.output
    assert "held out" in result.output
    card = load_checkpoint(out)[1]
    assert card.extra["flip"] is False and "held out" in card.extra["test_split"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and load_checkpoint(out)[1].extra["flip"] is True


def test_imagefolder_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(MissingDataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_archive_datasets_unpack_once_into_the_cache(tmp_path: Path, monkeypatch):
    source = tmp_path / "src"
    _write_tree(source / "cifar10" / "train", classes=("airplane", "ship"))
    _write_tree(source / "cifar10" / "test", classes=("airplane", "ship"))
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar10", arcname="cifar10")
    monkeypatch.setenv("TESTBED_DATA_DIR", str(data))
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path / "cache"))
    test = load_dataset("cifar10-jpeg", "test")
    assert test.classes == ["airplane", "ship"] and len(test) == 6
    assert (tmp_path / "cache" / "extracted" / "cifar10-jpeg" / ".complete").exists()
    assert test.arrays(12).shape == (6, 12, 12, 3)
    assert len(list((tmp_path / "cache" / "arrays").glob("cifar10-jpeg-test-*-12.npy"))) == 1
    (data / "cifar10-jpeg.tar.gz").unlink()  # already unpacked: the archive is no longer needed
    assert len(load_dataset("cifar10-jpeg", "train")) == 6


def test_an_archive_replaced_under_its_name_is_unpacked_again_and_its_arrays_made_again(
    tmp_path: Path, monkeypatch
):
    """The unpacked folder and the resized arrays were keyed by the archive's name: a new
    cifar10-jpeg.tar.gz (same name, same count, other pixels) went on giving the old images."""
    from shared.datasets import data_version

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("TESTBED_DATA_DIR", str(data))
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path / "cache"))

    def publish(seed: int) -> None:
        source = tmp_path / f"src{seed}"
        _write_tree(source / "cifar10" / "test", classes=("airplane", "ship"), seed=seed)
        with tarfile.open(data / "cifar10-jpeg.tar.gz", "w:gz") as tar:
            tar.add(source / "cifar10", arcname="cifar10")
        os.utime(data / "cifar10-jpeg.tar.gz", ns=(seed * 10**9, seed * 10**9))

    publish(1)
    first = load_dataset("cifar10-jpeg", "test")
    old_pixels, old_arrays, old_version = (
        first.image(0),
        first.arrays(12),
        data_version("cifar10-jpeg"),
    )
    publish(2)
    new_version = data_version("cifar10-jpeg")
    assert new_version not in (old_version, None)
    second = load_dataset("cifar10-jpeg", "test")
    assert len(second) == len(first)
    assert not np.array_equal(second.image(0), old_pixels)
    assert not np.array_equal(second.arrays(12), old_arrays)
    with Image.open(second.paths[0]) as image:  # what the new archive holds, not the old one
        np.testing.assert_array_equal(second.image(0), np.asarray(image.convert("RGB")))
    (data / "cifar10-jpeg.tar.gz").unlink()  # gone: the folder unpacked last stands for it
    assert data_version("cifar10-jpeg") == new_version
    np.testing.assert_array_equal(
        load_dataset("cifar10-jpeg", "test").arrays(12), second.arrays(12)
    )
    assert data_version("natural") is None


def test_an_archive_is_unpacked_by_one_process_while_the_others_wait(tmp_path: Path):
    """Five experiments started at once each unpacked the archive and replaced the folder
    another was reading; now the second says it waits for the first's lock and takes its
    folder."""
    import os
    import selectors
    import subprocess
    import sys
    import time

    from filelock import FileLock

    source = tmp_path / "src"
    _write_tree(source / "cifar10" / "test", classes=("airplane", "ship"))
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar10", arcname="cifar10")
    env = {**os.environ, "TESTBED_DATA_DIR": str(tmp_path / "data"),
           "TESTBED_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    target = tmp_path / "cache" / "extracted" / "cifar10-jpeg"
    target.parent.mkdir(parents=True)
    code = (
        "from shared.datasets import load_dataset; print(len(load_dataset('cifar10-jpeg', 'test')))"
    )
    with FileLock(str(target) + ".lock"):  # another process is unpacking it
        waiting = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert waiting.stderr is not None
        with selectors.DefaultSelector() as ready:
            ready.register(waiting.stderr, selectors.EVENT_READ)
            assert ready.select(timeout=120), "no word from the waiting process"
        said = waiting.stderr.readline()
        assert said.startswith("waiting for another process to finish unpacking cifar10-jpeg")
        time.sleep(0.5)  # a few more of its tries at the lock
        assert waiting.poll() is None  # it waits for the lock ...
        assert list(target.parent.iterdir()) == [target.parent / "cifar10-jpeg.lock"]
    out, err = waiting.communicate(timeout=120)  # ... and unpacks once it is free
    assert waiting.returncode == 0, err
    assert out.strip() == "6" and (target / ".complete").exists()


def test_tiny_imagenet_parts_and_their_words(tmp_path: Path, monkeypatch):
    source = tmp_path / "src" / "tiny-imagenet"
    _write_tree(source / "attacker", classes=("n01", "n02", "n03"))
    _write_tree(source / "defender", classes=("n01", "n02", "n03"), per_class=1)
    (source / "words.txt").write_text("n01\ttabby cat, tabby\nn02\tPersian cat\nn03\tgoldfish\n")
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "tiny-imagenet-subset.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="tiny-imagenet")
    monkeypatch.setenv("TESTBED_DATA_DIR", str(data))
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path / "cache"))
    attacker = load_dataset("tiny-imagenet-attacker")
    assert len(attacker) == 9 and len(load_dataset("tiny-imagenet-defender")) == 3
    assert attacker.class_groups == {"cat": [0, 1], "goldfish": [2]}


@pytest.mark.parametrize("filters", [True, False], ids=["data-filter", "before-3.11.4"])
@pytest.mark.filterwarnings("ignore:Python 3.14 will, by default, filter:DeprecationWarning")
def test_an_archive_that_writes_outside_its_folder_or_is_damaged_is_refused(
    filters: bool, tmp_path: Path, monkeypatch
):
    if not filters:  # Debian 12's Python 3.11.2 has no tarfile.data_filter
        monkeypatch.delattr(tarfile, "data_filter")
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    monkeypatch.setenv("TESTBED_DATA_DIR", str(data))
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(cache))
    payload = tmp_path / "payload.txt"
    payload.write_text("written by an archive")
    with tarfile.open(data / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(payload, arcname="cifar10/test/a/ok.txt")
        tar.add(payload, arcname="../../escaped.txt")
    with pytest.raises(TestbedError, match=r"cifar10-jpeg.tar.gz cannot be unpacked: .*escaped"):
        load_dataset("cifar10-jpeg", "test")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert [p.name for p in (cache / "extracted").iterdir()] == ["cifar10-jpeg.lock"]
    with tarfile.open(data / "cifar10-jpeg.tar.gz", "w:gz") as tar:  # a link out of the folder
        link = tarfile.TarInfo("cifar10/test/a/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(TestbedError, match="cannot be unpacked: .*link"):
        load_dataset("cifar10-jpeg", "test")
    whole = tmp_path / "whole.tar.gz"
    _write_tree(tmp_path / "src" / "cifar10" / "test")
    with tarfile.open(whole, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10", arcname="cifar10")
    (data / "cifar10-jpeg.tar.gz").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(TestbedError, match="cannot be unpacked"):  # cut short in transfer
        load_dataset("cifar10-jpeg", "test")
    assert [p.name for p in (cache / "extracted").iterdir()] == ["cifar10-jpeg.lock"]
    (data / "cifar10-jpeg.tar.gz").write_bytes(whole.read_bytes())
    assert len(load_dataset("cifar10-jpeg", "test")) == 6  # the whole archive unpacks


@pytest.mark.parametrize(
    "name", ["cifar10-jpeg", "tiny-imagenet-attacker", "tiny-imagenet-defender"]
)
def test_missing_archive_is_a_clear_error(name, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TESTBED_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MissingDataError, match=r"archive .* is missing.*TESTBED_DATA_DIR"):
        load_dataset(name)


def test_unknown_dataset_and_split_are_clear_errors():
    with pytest.raises(UnknownNameError, match="unknown dataset 'imagenet-42'.*digits"):
        load_dataset("imagenet-42")
    with pytest.raises(TestbedError, match="unknown split"):
        load_dataset("digits", "validation")
    assert {"digits", "natural", "noise", "cifar10-jpeg", "mnist", "svhn"} <= set(dataset_names())


def _idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_loader_reads_its_real_file_format(tmp_path: Path, monkeypatch):
    """torchvision's MNIST class reads IDX files we write: the real loading code, offline."""
    raw = tmp_path / "cache" / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path / "cache"))
    mnist = load_dataset("mnist", "test")
    assert len(mnist) == 5 and mnist.image(0).shape == (28, 28, 3)
    assert len(mnist.classes) == 10


def test_torchvision_dataset_absent_without_download_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TESTBED_DOWNLOAD", "0")
    with pytest.raises(MissingDataError, match="TESTBED_DOWNLOAD=1"):
        load_dataset("svhn")
