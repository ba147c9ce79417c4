"""The knockoff's training defaults, in one home: the CLI, `train`, the attacks and the demo's
own named choices read them from here (import-light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnockoffDefaults:
    arch: str = "cnn5"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    val_fraction: float = 0.1
    pad: int = 2
    keep: str = "best"


KNOCKOFF = KnockoffDefaults()
