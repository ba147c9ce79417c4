"""Gaussian noise on the probabilities, seeded per image, argmax kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field

from defense.perturbations import keep_argmax, renormalize, row_uniforms
from defense.registry import BuildContext, DefenseSettings, register_defense
from shared.pipeline import AnswerBatch

STD = 0.1


class NoiseSettings(DefenseSettings):
    """`VICTIM_NOISE_STD` switches it on."""

    std: float | None = Field(None, gt=0, description="noise std; setting it switches it on")

    sweeps: ClassVar = ({"std": STD},)


def gaussian_noise(probs: torch.Tensor, std: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Add N(0, std) to each probability, clip, renormalize, keep the argmax.

    `uniforms` (B, C) in (0, 1) become standard normals through the inverse normal CDF.
    """
    noise = torch.special.ndtri(uniforms.double())
    return keep_argmax(probs, renormalize(probs.double() + std * noise))


@dataclass
class GaussianNoiseStep:
    """Pipeline step: Gaussian noise on every row, seeded per image (same image, same answer)."""

    std: float = STD
    seed: int = 0
    name: str = "noise"

    def __call__(self, batch: AnswerBatch) -> AnswerBatch:
        uniforms = row_uniforms(batch.inputs, self.seed, self.name, batch.probs.shape[1])
        return batch.replace(probs=gaussian_noise(batch.probs, self.std, uniforms))


@register_defense("noise", settings=NoiseSettings, switch="std", order=40)
def build(settings: NoiseSettings, ctx: BuildContext) -> GaussianNoiseStep:
    assert settings.std is not None
    return GaussianNoiseStep(settings.std, ctx.seed)
