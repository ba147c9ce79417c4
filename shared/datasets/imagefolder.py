"""A user's own ImageFolder tree (one folder per class), read with torchvision's ImageFolder.

`imagefolder:<path>` honours the split: `<path>/train` and `<path>/test` when the tree has them,
otherwise a fixed, seeded fraction of each class held out as the test split (said in
`dataset.split_note`). A tree declares its labels not flip-invariant (traffic signs, digits,
text) with a marker file `<path>/.no-flip`; training then never mirrors its images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.datasets.base import FileDataset
from shared.errors import MissingDataError, TestbedError

NO_FLIP_MARKER = ".no-flip"
"""A file of this name at the top of a tree: a horizontal flip changes these images' labels."""
HELD_OUT_FRACTION = 0.2
"""The test share of a tree without `train/` and `test/`, taken per class."""
HELD_OUT_SEED = 0
"""Fixed, not the training seed: every command sees the same test images for one tree."""


def existing_tree(root: str | Path) -> Path:
    """The tree's folder, user-expanded; a folder that is not there is one clear line."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingDataError(f"image folder {root} does not exist")
    return root


def read_tree(
    root: str | Path,
    cache_key: str | None = None,
    name: str | None = None,
    classes: list[str] | None = None,
) -> FileDataset:
    """Every image of one ImageFolder tree; `classes` fixes the label order (a test tree's)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = existing_tree(root)
    try:
        found, _ = find_classes(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise MissingDataError(f"{root} is not an ImageFolder tree: {exc}") from None
    if classes is not None and (unknown := sorted(set(found) - set(classes))):
        raise TestbedError(f"{root} has classes the training split lacks: {', '.join(unknown[:5])}")
    classes = found if classes is None else classes
    try:
        samples = make_dataset(
            str(root), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True
        )
    except (FileNotFoundError, RuntimeError) as exc:
        raise MissingDataError(f"{root} is not an ImageFolder tree: {exc}") from None
    if not samples:
        raise MissingDataError(f"{root} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return FileDataset(
        name=name or f"imagefolder:{root}",
        classes=list(classes),
        targets=np.asarray([t for _, t in samples], dtype=np.int64),
        paths=[path for path, _ in samples],
        cache_key=cache_key,
    )


def held_out_indices(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded `fraction` of each class (at least one image stays in training), sorted."""
    chosen: list[np.ndarray] = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        n_test = min(len(members) - 1, int(round(len(members) * fraction)))
        if n_test > 0:
            rng = np.random.default_rng([seed, int(label)])
            chosen.append(rng.choice(members, size=n_test, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def imagefolder(
    root: str | Path, split: str = "train", *, flip_invariant: bool | None = None
) -> FileDataset:
    """One split of a user's tree; `flip_invariant` overrides the tree's `.no-flip` marker."""
    root = existing_tree(root)
    name = f"imagefolder:{root}"
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = read_tree(root / "train", name=name)
        dataset = train if split == "train" else read_tree(root / "test", name=name,
                                                           classes=train.classes)  # fmt: skip
        dataset.split_note = f"{name}: the {split} split is {root / split}"
    else:
        whole = read_tree(root, name=name)
        test = held_out_indices(whole.targets, HELD_OUT_FRACTION, HELD_OUT_SEED)
        keep = test if split == "test" else np.setdiff1d(np.arange(len(whole)), test)
        if len(keep) == 0:
            raise MissingDataError(
                f"{root} is too small to hold out a test split: give each class at least 3 "
                f"images, or make train/ and test/ folders"
            )
        dataset = FileDataset(
            name=name,
            classes=whole.classes,
            targets=whole.targets[keep],
            paths=[whole.paths[i] for i in keep],
        )
        dataset.split_note = (
            f"{name} has no train/ and test/ folders: the test split is a seeded "
            f"{HELD_OUT_FRACTION:.0%} of each class held out (seed {HELD_OUT_SEED}), "
            f"{len(test)} of {len(whole)} images; this is the {split} split ({len(keep)})"
        )
    declared = not (root / NO_FLIP_MARKER).exists()
    dataset.flip_invariant = declared if flip_invariant is None else flip_invariant
    return dataset
