"""Query pools the experiments build on disk, as ImageFolder trees the attacker reads like any
user's folder (`imagefolder:<path>`), cached by their configuration:

- the victim's own test split cut in two halves: `train/` the in-distribution attacker's pool,
  `test/` the held-out half every knockoff of the experiment is scored on (the attacker never
  queried it);
- a sample of a pool as one attacker transform of `shared.transforms` leaves it: the pixels
  the service decodes (a JPEG-re-encoding attacker's images, stored losslessly), so the
  attacker client sends exactly what the service would have seen.

Class folders are named `<index>-<name>` so that their sorted order is the dataset's label order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scenarios.experiments.cache import cached_path, making
from shared.datasets import load_dataset
from shared.imaging import encode_image
from shared.transforms import parse_transform

POOL_CLASS = "000-pool"


def write_tree(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]):
    """root/<split>/<index>-<class>/<n>.png for each (images, labels) split; marks it done."""
    for split, (images, labels) in splits.items():
        folders = [root / split / f"{i:03d}-{name}" for i, name in enumerate(classes)]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for n, (image, label) in enumerate(zip(images, labels, strict=True)):
            (folders[int(label)] / f"{n:06d}.png").write_bytes(encode_image(image))
    (root / ".done").write_text("complete\n")


def in_distribution(dataset: str, size: int, seed: int = 0) -> str:
    """`imagefolder:` spec of the victim's test split halved: train/ to query, test/ to score."""
    root = cached_path("pools", {"kind": "halves", "dataset": dataset, "size": size,
                                 "seed": seed}, "")  # fmt: skip
    with making(root):
        if not (root / ".done").exists():
            test = load_dataset(dataset, "test", image_size=size, seed=seed)
            images, targets = test.arrays(size), np.asarray(test.targets)
            order = np.random.default_rng([seed, 0x1D]).permutation(len(images))
            half = len(order) // 2
            query, score = np.sort(order[:half]), np.sort(order[half:])
            write_tree(root, {"train": (images[query], targets[query]),
                              "test": (images[score], targets[score])},
                       list(test.classes))  # fmt: skip
    return f"imagefolder:{root}"


def transformed(pool: str, pool_size: int | None, sample: int, transform: str, size: int,
                seed: int = 0) -> str:  # fmt: skip
    """`imagefolder:` spec of `sample` images of `pool` (seeded), as `transform` leaves them at
    the victim's side `size` (`none`: plainly resized, the attacker client's default)."""
    parsed = parse_transform(transform)
    spec = {"kind": "transformed", "pool": pool, "pool_size": pool_size, "sample": sample,
            "transform": parsed.spec, "size": size, "seed": seed}  # fmt: skip
    root = cached_path("pools", spec, "")
    with making(root):
        if not (root / ".done").exists():
            data = load_dataset(pool, "train", size=pool_size, image_size=size, seed=seed)
            pick = np.sort(np.random.default_rng([seed, 0x7F]).permutation(len(data))[:sample])
            sources = [data.image(int(i)) for i in pick]
            images = parsed.apply_many(sources, size, None)
            labels = np.zeros(len(images), dtype=np.int64)
            # the test split is only there to make a train/test tree; nobody scores on it
            write_tree(root, {"train": (images, labels), "test": (images[:1], labels[:1])},
                       [POOL_CLASS.split("-", 1)[1]])  # fmt: skip
    return f"imagefolder:{root}"
