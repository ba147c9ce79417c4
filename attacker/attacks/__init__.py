"""Attacks by name: `make_attack(name, params).extract(target)`; one file per attack."""

from attacker.attacks import copycat, jbda, knockoff  # noqa: F401  (each registers itself)
from attacker.attacks.base import Attack, AttackParams, Extraction, Target
from attacker.attacks.registry import ATTACKS, attack_names, make_attack, register

__all__ = ["ATTACKS", "Attack", "AttackParams", "Extraction", "Target", "attack_names",
           "make_attack", "register"]  # fmt: skip
