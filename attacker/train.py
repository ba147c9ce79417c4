"""Train knockoffs from a transfer set: one fresh model per budget, chosen on held-out answers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from attacker.defaults import KNOCKOFF
from attacker.losses import answer_loss
from attacker.transfer import TransferSet, load_transfer_set
from shared.checkpoint import ModelCard, check_writable, save_checkpoint
from shared.device import resolve_device
from shared.errors import TestbedError, check_choice
from shared.models import Classifier, create_model
from shared.training import TrainConfig, dataset_stats, fit

KEEP = ("best", "last")
"""The knockoff's kept weights: the epoch best on the validation split, or the final one."""


def check_keep(keep: str, name: str = "keep") -> None:
    """Refuse an unknown choice of kept weights, naming the setting as its caller knows it."""
    check_choice(keep, KEEP, name)


def content_order(transfer: TransferSet) -> np.ndarray:
    """The rows sorted by content: by the image's pixels, then (for the same image asked twice)
    by its target. A knockoff then depends on the set of answers it is given, not on the order
    they were asked in: two strategies that sent the same images (the whole pool, in another
    order) get the same split and batches for a seed, even where the victim's answers differ in
    the last float bits (its batches were composed differently)."""
    images = transfer.images.numpy()
    targets = transfer.targets.numpy()
    keys = [
        (hashlib.sha256(images[i].tobytes()).digest(), targets[i].tobytes())
        for i in range(len(images))
    ]
    return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def balance_indices(labels: np.ndarray, seed: int = 0, per_class: int | None = None) -> np.ndarray:
    """Copycat's balancing: each stolen class randomly over- or under-sampled to one count.

    The count defaults to the mean over the classes present, so the set keeps about its size.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) == 0:
        return np.empty(0, dtype=np.int64)
    target = per_class or max(1, round(len(labels) / len(classes)))
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        replace = len(members) < target
        chosen.append(rng.choice(members, size=target, replace=replace))
    return rng.permutation(np.concatenate(chosen))


@dataclass
class KnockoffOptions:
    """How a knockoff is trained; the defaults live in `attacker.defaults.KNOCKOFF`."""

    arch: str = KNOCKOFF.arch
    epochs: int = KNOCKOFF.epochs
    batch_size: int = KNOCKOFF.batch_size
    lr: float = KNOCKOFF.lr
    weights: str | None = None
    balance: bool = False
    val_fraction: float = KNOCKOFF.val_fraction
    pad: int = KNOCKOFF.pad
    flip: bool = False
    keep: str = KNOCKOFF.keep
    """Which weights the knockoff keeps: `best`, those of the epoch best on the validation split
    (held-out answers: the attacker has no test data), or `last`, the final epoch's. On a split
    of a few dozen answers the best epoch is mostly noise (see `scenarios.experiments.scale`)."""
    min_steps: int = 0
    """Train for at least this many optimizer steps, adding epochs on small transfer sets: a
    fixed epoch count gives 1,000 answers a tenth of the steps of 10,000, and a knockoff that
    has not converged measures its recipe, not the budget (0: the epochs as given)."""
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    progress: bool = True


@dataclass
class KnockoffResult:
    budget: int
    checkpoint: Path | None
    val_agreement: float
    """Agreement with the victim on the held-out answers (nan where none were held out)."""
    best_epoch: int
    seconds: float
    class_counts: dict[int, int] = field(default_factory=dict)


def epochs_for(n_train: int, options: KnockoffOptions) -> int:
    """The epochs that give `n_train` images at least `options.min_steps` steps."""
    steps_per_epoch = max(1, -(-n_train // options.batch_size))
    return max(options.epochs, -(-options.min_steps // steps_per_epoch))


def train_knockoff(
    transfer: TransferSet, options: KnockoffOptions, out: Path | None = None
) -> tuple[Classifier, KnockoffResult]:
    """A fresh model trained on the whole given transfer set (split into train and validation;
    `val_fraction=0` trains on every answer, keeping the last epoch).

    The split and the batches are drawn over the rows in `content_order`, seeded: the same
    answers in any order give the same knockoff."""
    n = len(transfer.images)
    if n < 10:
        raise TestbedError(f"a transfer set of {n} answers is too small to train on")
    check_keep(options.keep)
    if not 0 <= options.val_fraction < 1:
        raise TestbedError(f"val_fraction must be in [0, 1), not {options.val_fraction}")
    if options.val_fraction == 0 and options.keep == "best":
        raise TestbedError("keep=best needs held-out answers: a val_fraction above 0")
    if out is not None:
        check_writable(out)
    device = resolve_device(options.device)
    rng = np.random.default_rng(options.seed)
    order = content_order(transfer)[rng.permutation(n)]
    n_val = max(1, int(n * options.val_fraction)) if options.val_fraction > 0 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    labels = transfer.labels.numpy()
    if options.balance:
        train_idx = train_idx[balance_indices(labels[train_idx], options.seed)]
    mean, std = (None, None) if options.weights else dataset_stats(transfer.images[train_idx])
    torch.manual_seed(options.seed)  # the same fresh initialisation for every budget
    model = create_model(
        options.arch, transfer.num_classes, weights=options.weights, mean=mean, std=std
    )
    config = TrainConfig(
        epochs=epochs_for(len(train_idx), options), batch_size=options.batch_size,
        lr=options.lr, pad=options.pad,
        flip=options.flip, seed=options.seed, amp=options.amp, progress=options.progress,
        description=f"knockoff {options.arch} ({n} queries)", keep_best=options.keep == "best",
    )  # fmt: skip
    result = fit(
        model, transfer.images[train_idx], transfer.targets[train_idx],
        answer_loss(transfer.mode), config, device,
        x_val=transfer.images[val_idx], val_labels=transfer.labels[val_idx],
    )  # fmt: skip
    counts = dict(zip(*np.unique(labels[train_idx], return_counts=True), strict=True))
    summary = KnockoffResult(
        budget=n,
        checkpoint=None,
        val_agreement=result.best_val_accuracy if n_val else float("nan"),
        best_epoch=result.best_epoch,
        seconds=result.seconds,
        class_counts={int(k): int(v) for k, v in counts.items()},
    )
    if out is not None:
        card = ModelCard(
            arch=options.arch,
            num_classes=transfer.num_classes,
            classes=[str(i) for i in range(transfer.num_classes)],
            input_size=transfer.input_size,
            mean=[float(v) for v in model.mean.flatten()],
            std=[float(v) for v in model.std.flatten()],
            dataset=f"transfer-set run {transfer.run['id']} ({transfer.run['pool']})",
            seed=options.seed,
            extra={
                "budget": n,
                "output_mode": transfer.mode,
                "run": transfer.run,
                "options": {k: v for k, v in asdict(options).items() if k != "progress"},
                "val_agreement": result.best_val_accuracy if n_val else None,
                "best_epoch": result.best_epoch,
                "epochs": config.epochs,
            },  # fmt: skip
        )
        summary.checkpoint = save_checkpoint(out, model.cpu(), card)
    return model, summary


def budget_path(out: Path, budget: int, several: bool) -> Path:
    return out.with_name(f"{out.stem}-{budget}{out.suffix}") if several else out


def train_budgets(
    db: Path,
    budgets: Sequence[int | None],
    options: KnockoffOptions,
    out: Path,
    run_id: int | None = None,
) -> list[KnockoffResult]:
    """One fresh knockoff per budget, each on the first `budget` answers of the run."""
    results = []
    for budget in budgets:
        transfer = load_transfer_set(db, run_id, budget)
        path = budget_path(out, len(transfer.images), len(budgets) > 1)
        _, result = train_knockoff(transfer, options, path)
        results.append(result)
    return results
