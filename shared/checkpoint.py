"""Checkpoints that carry everything needed to serve a model, loaded with weights_only=True."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from shared.errors import TestbedError
from shared.models import Classifier, create_model
from shared.safeload import load_weights_only, one_line, seal, unseal

FORMAT_VERSION = 1


@dataclass
class ModelCard:
    """What a checkpoint says about its model (plain types only, so weights_only loading works)."""

    arch: str
    num_classes: int
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    dataset: str
    seed: int
    test_accuracy: float | None = None
    extra: dict = field(default_factory=dict)


def check_same_classes(card: ModelCard, dataset: str, classes: list[str]) -> None:
    """A victim's labels are read against `dataset`'s classes: refuse a dataset whose classes
    are not the ones it was trained on (a digits victim scored on CIFAR-10 read 0.064). A tree's
    folders may carry an index prefix that pins their order (`003-cat`, as the experiments
    write them)."""
    if card.classes and _plain(card.classes) != _plain(classes):
        raise TestbedError(
            f"the victim was trained on {card.dataset} ({_some(card.classes)}), and {dataset} "
            f"has other classes ({_some(classes)}): use --dataset {card.dataset}, or a dataset "
            "with its classes in its order"
        )


def _plain(names: list[str]) -> list[str]:
    return [re.sub(r"^\d+-", "", str(name)) for name in names]


def _some(names: list[str]) -> str:
    shown = ", ".join(map(str, names[:4]))
    return f"{len(names)} classes: {shown}{', ...' if len(names) > 4 else ''}"


def check_writable(path: str | Path, what: str = "checkpoint") -> Path:
    """Fail before minutes of training, not after them: the folder is made and a file written
    and removed beside `path` (the name the save writes first)."""
    path = Path(path)
    probe = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise TestbedError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
    return path


def save_checkpoint(path: str | Path, model: Classifier, card: ModelCard) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "card": asdict(card),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "saved_at": time.time(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(seal(payload), tmp)
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Classifier, ModelCard]:
    """Rebuild the model from its card and weights; eval mode, on `device`."""
    payload = load_weights_only(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise TestbedError(f"{path} is not a checkpoint of this project (format {FORMAT_VERSION})")
    payload = unseal(payload, path, "checkpoint")
    try:
        card = ModelCard(**payload["card"])
        model = create_model(card.arch, card.num_classes, mean=card.mean, std=card.std)
        model.load_state_dict(payload["state_dict"])
    except TestbedError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TestbedError(
            f"checkpoint {path} does not match its own model card: {one_line(exc)}"
        ) from None
    return model.to(device).eval(), card
