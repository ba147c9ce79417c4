"""Victim training defaults, in one home: a recipe per dataset (arch, epochs, batch, rate).

`victim-service train`, `train_victim` and the demo's presets read their defaults here, so the
README's recipes and the code cannot drift apart. Import-light (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VictimRecipe:
    arch: str
    epochs: int
    batch_size: int
    lr: float
    input_size: int = 32


DIGITS = VictimRecipe(arch="cnn5", epochs=15, batch_size=64, lr=0.05)
"""scikit-learn's digits: 0.989-0.998 test accuracy in about 11 s on 2 CPU cores."""
CIFAR10 = VictimRecipe(arch="cnn9", epochs=18, batch_size=256, lr=0.2)
"""CIFAR-10 on a 2-core CPU: 0.863 test accuracy in 8 min 40 s (README)."""

RECIPES: dict[str, VictimRecipe] = {"digits": DIGITS, "cifar10-jpeg": CIFAR10, "cifar10": CIFAR10}
GENERIC = DIGITS
"""Any other dataset (a user's ImageFolder, torchvision's): the small, quick recipe."""


def recipe_for(dataset: str) -> VictimRecipe:
    return RECIPES.get(dataset, GENERIC)
