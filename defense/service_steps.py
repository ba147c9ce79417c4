"""Build the service's defense steps from its settings (filled in by the defenses issue)."""

from __future__ import annotations


def build_steps(settings, model, card, device) -> list:
    return []
