"""The archives in the shared data folder (cifar10-jpeg, tiny-imagenet-*), unpacked once."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

from shared.datasets.base import FileDataset
from shared.datasets.imagefolder import read_tree
from shared.datasets.registry import register
from shared.errors import MissingDataError, TestbedError
from shared.paths import data_settings

ARCHIVES = {
    "cifar10-jpeg": "cifar10-jpeg.tar.gz",
    "tiny-imagenet-defender": "tiny-imagenet-subset.tar.gz",
    "tiny-imagenet-attacker": "tiny-imagenet-subset.tar.gz",
}
"""The datasets read from an archive in the data folder, and its file name."""


def extracted_archive(archive_name: str) -> Path:
    """Unpack `archive_name` from the data folder once into the cache; return the folder.

    The folder is taken again only while it came from this very archive (`archive_stamp`): an
    archive replaced under the same name is unpacked again, where its name alone had kept the
    old images. Without the archive, the folder unpacked before is used as it is."""
    archive = data_settings().data_dir / archive_name
    target = _unpacked_folder(archive_name)
    if _unpacked_from(target, archive):
        return target
    if not archive.exists():
        raise MissingDataError(
            f"dataset archive {archive} is missing. Put {archive_name} there, or point "
            f"TESTBED_DATA_DIR at the folder that holds it (see ../shared/data/README.md)."
        )
    from filelock import FileLock, Timeout

    target.parent.mkdir(parents=True, exist_ok=True)
    # one process unpacks, the others wait and take its folder: without the lock, a second
    # process replaced the folder while the first read it (seen with five experiments at once)
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # say why nothing happens: Tiny-ImageNet takes a while to unpack
        print(f"waiting for another process to finish unpacking {archive_name} into {target}",
              file=sys.stderr, flush=True)  # fmt: skip
        lock.acquire()
    try:
        if _unpacked_from(target, archive):
            return target
        if (target / ".complete").exists():
            print(f"{archive} has changed since it was unpacked: unpacking it again",
                  file=sys.stderr, flush=True)  # fmt: skip
        stamp = archive_stamp(archive)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            unpack(archive, partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (partial / ".complete").write_text(stamp)
        shutil.rmtree(target, ignore_errors=True)
        partial.replace(target)
    finally:
        lock.release()
    return target


def archive_stamp(archive: Path) -> str:
    """Which archive a folder was unpacked from: its name, size and modification time, hashed
    (reading a 250 MB archive through a hash on every load would cost seconds)."""
    info = archive.stat()
    fields = f"{archive.name}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha256(fields.encode()).hexdigest()[:16]


def unpacked_stamp(folder: Path) -> str:
    """The stamp of the archive `folder` was unpacked from; keys the caches made from it."""
    return (folder / ".complete").read_text().strip()


def data_version(dataset: str) -> str | None:
    """The stamp of the archive `dataset` is read from (None for a dataset of no archive),
    without unpacking it: caches of what was made from a dataset name it with this, so that a
    replaced archive is not answered from the old one's artefacts."""
    archive_name = ARCHIVES.get(dataset)
    if archive_name is None:
        return None
    archive = data_settings().data_dir / archive_name
    if archive.exists():
        return archive_stamp(archive)
    unpacked = _unpacked_folder(archive_name)
    return unpacked_stamp(unpacked) if (unpacked / ".complete").exists() else None


def _unpacked_folder(archive_name: str) -> Path:
    stem = archive_name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".zip")
    return data_settings().cache_dir / "extracted" / stem


def _unpacked_from(target: Path, archive: Path) -> bool:
    if not (target / ".complete").exists():
        return False
    return not archive.exists() or unpacked_stamp(target) == archive_stamp(archive)


def unpack(archive: Path, folder: Path) -> None:
    """Unpack a .tar.gz, .tgz or .zip into `folder`, refusing in one line an archive that is
    damaged or would write outside the folder (absolute names, `..`, links out of it)."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zipped:  # zipfile drops `..` and leading slashes
                zipped.extractall(folder)
            return
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(folder, filter="data")
            else:  # Pythons before 3.11.4 (Debian 12's 3.11.2) have no extraction filters
                for member in tar.getmembers():
                    _refuse_outside(member, folder)
                tar.extractall(folder)  # every member checked above
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise TestbedError(f"dataset archive {archive} cannot be unpacked: {exc}") from None


def _refuse_outside(member: tarfile.TarInfo, folder: Path) -> None:
    inside = (folder / member.name).resolve().is_relative_to(folder.resolve())
    if not inside or member.issym() or member.islnk() or member.isdev():
        raise tarfile.TarError(f"{member.name!r} is a link, a device or outside the folder")


@register("cifar10-jpeg")
def cifar10_jpeg(split: str = "train", **_: object) -> FileDataset:
    folder = extracted_archive(ARCHIVES["cifar10-jpeg"])
    key = f"cifar10-jpeg-{split}-{unpacked_stamp(folder)}"
    return read_tree(folder / "cifar10" / split, cache_key=key, name="cifar10-jpeg")


def _tiny_imagenet(part: str) -> FileDataset:
    folder = extracted_archive(ARCHIVES[f"tiny-imagenet-{part}"])
    root = folder / "tiny-imagenet"
    key = f"tiny-imagenet-{part}-{unpacked_stamp(folder)}"
    dataset = read_tree(root / part, cache_key=key, name=f"tiny-imagenet-{part}")
    words = root / "words.txt"
    if words.exists():
        lookup = dict(
            line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line
        )
        dataset.class_groups = _groups_by_head_noun(
            {wnid: lookup.get(wnid, wnid) for wnid in dataset.classes}, dataset.classes
        )
    return dataset


def _groups_by_head_noun(words: dict[str, str], classes: list[str]) -> dict[str, list[int]]:
    """Group WordNet classes by the last word of their first name ("tabby cat" -> "cat").

    Tiny-ImageNet ships words but not WordNet's is-a relation; the head noun is the coarse
    level the attacker can read off their own pool's labels without outside data.
    """
    groups: dict[str, list[int]] = {}
    for index, wnid in enumerate(classes):
        head = words[wnid].split(",")[0].strip().split()[-1].lower()
        groups.setdefault(head, []).append(index)
    return groups


@register("tiny-imagenet-defender")
def tiny_imagenet_defender(**_: object) -> FileDataset:
    return _tiny_imagenet("defender")


@register("tiny-imagenet-attacker")
def tiny_imagenet_attacker(**_: object) -> FileDataset:
    return _tiny_imagenet("attacker")
