"""Train a victim model on a registry dataset and write a self-describing checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shared.checkpoint import ModelCard, check_writable, save_checkpoint
from shared.datasets import check_dataset, load_dataset
from shared.device import resolve_device
from shared.models import check_arch, create_model
from shared.training import (
    TrainConfig,
    accuracy,
    check_schedule,
    dataset_stats,
    fit,
    to_tensor,
)
from victim_service.recipes import recipe_for


@dataclass
class VictimResult:
    checkpoint: Path
    card: ModelCard
    test_accuracy: float
    val_accuracy: float
    seconds: float


def train_victim(
    dataset: str,
    arch: str,
    out: str | Path,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    input_size: int | None = None,
    weights: str | None = None,
    seed: int = 0,
    device: str = "auto",
    val_fraction: float = 0.1,
    label_smoothing: float = 0.1,
    amp: bool = True,
    progress: bool = True,
    flip: bool | None = None,
    say: Callable[[str], object] = lambda _: None,
) -> VictimResult:
    """Seeded training; the checkpoint kept is the best on a held-out part of the train split.

    Options left None come from the dataset's recipe (victim_service/recipes.py). `flip` None
    mirrors training images only where the dataset declares its labels flip-invariant; `say`
    hears where a user's tree's test split came from.
    """
    check_dataset(dataset)  # a typo is refused before minutes of loading images
    check_arch(arch)
    recipe = recipe_for(dataset)
    epochs = recipe.epochs if epochs is None else epochs
    batch_size = recipe.batch_size if batch_size is None else batch_size
    lr = recipe.lr if lr is None else lr
    input_size = recipe.input_size if input_size is None else input_size
    check_schedule(epochs, batch_size, lr)
    check_writable(out)
    dev = resolve_device(device)
    train_set = load_dataset(dataset, "train", image_size=input_size, seed=seed)
    test_set = load_dataset(dataset, "test", image_size=input_size, seed=seed)
    if test_set.split_note:
        say(test_set.split_note)
    flip = train_set.flip_invariant if flip is None else flip
    x_all = to_tensor(train_set.arrays(input_size))
    y_all = torch.from_numpy(train_set.targets)
    rng = np.random.default_rng(seed)
    order = torch.from_numpy(rng.permutation(len(x_all)))
    n_val = max(1, int(len(order) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    mean, std = dataset_stats(x_all[train_idx])
    torch.manual_seed(seed)  # the initial weights too: not whatever the process drew before
    model = create_model(
        arch, len(train_set.classes), weights=weights,
        mean=None if weights else mean, std=None if weights else std,
    )  # fmt: skip
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, amp=amp,
        flip=flip, pad=max(1, input_size // 8),
        progress=progress, description=f"victim {arch} on {dataset}",
    )  # fmt: skip

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    result = fit(
        model, x_all[train_idx], y_all[train_idx], loss_fn, config, dev,
        x_val=x_all[val_idx], val_labels=y_all[val_idx],
    )  # fmt: skip
    x_test = to_tensor(test_set.arrays(input_size))
    test_acc = accuracy(model, x_test, torch.from_numpy(test_set.targets), dev, amp=amp)
    card = ModelCard(
        arch=arch,
        num_classes=len(train_set.classes),
        classes=list(train_set.classes),
        input_size=input_size,
        mean=[float(v) for v in model.mean.flatten()],
        std=[float(v) for v in model.std.flatten()],
        dataset=dataset,
        seed=seed,
        test_accuracy=test_acc,
        extra={
            "epochs": epochs,
            "best_epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "train_seconds": result.seconds,
            "weights": weights,
            "device": str(dev),
            "flip": flip,
            "test_split": test_set.split_note or "test",
        },
    )
    path = save_checkpoint(out, model.cpu(), card)
    return VictimResult(path, card, test_acc, result.best_val_accuracy, result.seconds)
