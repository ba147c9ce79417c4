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


def extracted_archive(archive_name: str) -> Path:
    """Unpack `archive_name` from the data folder once into the cache; return the folder."""
    settings = data_settings()
    archive = settings.data_dir / archive_name
    stem = archive_name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".zip")
    target = settings.cache_dir / "extracted" / stem
    if (target / ".complete").exists():
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
        if (target / ".complete").exists():
            return target
        partial = target.with_name(f"{stem}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            unpack(archive, partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (partial / ".complete").write_text(hashlib.sha256(archive.name.encode()).hexdigest())
        shutil.rmtree(target, ignore_errors=True)
        partial.replace(target)
    finally:
        lock.release()
    return target


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
    root = extracted_archive("cifar10-jpeg.tar.gz") / "cifar10" / split
    return read_tree(root, cache_key=f"cifar10-jpeg-{split}", name="cifar10-jpeg")


def _tiny_imagenet(part: str) -> FileDataset:
    root = extracted_archive("tiny-imagenet-subset.tar.gz") / "tiny-imagenet"
    dataset = read_tree(
        root / part, cache_key=f"tiny-imagenet-{part}", name=f"tiny-imagenet-{part}"
    )
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
