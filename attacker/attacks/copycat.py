"""Copycat CNN (Correia-Silva et al., IJCNN 2018): natural random images, hard labels only (the
argmax, even when the API discloses more), and the stolen labels balanced by over- and
under-sampling each class to one count before training."""

from __future__ import annotations

from typing import Literal

from attacker.attacks.knockoff import KnockoffNets, KnockoffParams
from attacker.attacks.registry import register


class CopycatParams(KnockoffParams):
    strategy: Literal["random"] = "random"
    """Copycat samples its natural images at random."""


@register("copycat")
class Copycat(KnockoffNets):
    Params = CopycatParams
    hard_labels = True
    balance = True
