"""Reverse sigmoid (Lee et al., 2019): a deceptive perturbation of every probability vector.

With s the sigmoid and s^-1 the logit, r = beta * (s(gamma * s^-1(y)) - 1/2) and
y' = (y - r) / Z, Z renormalizing to a distribution. gamma = 1 gives s(s^-1(y)) = y, an affine
map of y that an attacker inverts exactly, so gamma must stay away from 1.

Defaults are ART's `ReverseSigmoid` postprocessor (beta = 1.0, gamma = 0.1), the setting most
used in practice: gamma 0.1 flattens the sigmoid so that small probabilities are pushed up and
reordered while the answer keeps the victim's top class. ModelGuard's benchmark uses
beta = 0.008, gamma = 0.2, which subtracts at most 0.004 from a probability before the
renormalization (a confident 10-class answer moves by 0.014-0.025 after it): too gentle to be
the default. Where the raw formula would move the top class (beta * gamma large, or an
extremely confident row), `keep_argmax` restores it; everywhere else the output is the formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field

from defense.perturbations import EPS, keep_argmax, renormalize
from defense.registry import BuildContext, DefenseSettings, register_defense
from shared.pipeline import AnswerBatch

BETA = 1.0
GAMMA = 0.1


class ReverseSigmoidSettings(DefenseSettings):
    """`VICTIM_REVERSE_SIGMOID_BETA` switches it on; `_GAMMA` shapes it."""

    beta: float | None = Field(None, gt=0, description="magnitude; setting it switches it on")
    gamma: float = Field(GAMMA, gt=0, description="shape; 1 would be an affine (no) defense")

    sweeps: ClassVar = ({"beta": BETA, "gamma": GAMMA},)


def reverse_sigmoid(probs: torch.Tensor, beta: float = BETA, gamma: float = GAMMA) -> torch.Tensor:
    """The perturbed distribution of each row, with its original argmax kept."""
    p = probs.double().clamp(EPS, 1 - EPS)
    logit = torch.log(p) - torch.log1p(-p)
    perturbed = renormalize(p - beta * (torch.sigmoid(gamma * logit) - 0.5))
    return keep_argmax(probs, perturbed)


@dataclass
class ReverseSigmoidStep:
    """Pipeline step: reverse-sigmoid perturbation of every row (deterministic)."""

    beta: float = BETA
    gamma: float = GAMMA
    name: str = "reverse_sigmoid"

    def __call__(self, batch: AnswerBatch) -> AnswerBatch:
        return batch.replace(probs=reverse_sigmoid(batch.probs, self.beta, self.gamma))


@register_defense("reverse_sigmoid", settings=ReverseSigmoidSettings, switch="beta", order=30)
def build(settings: ReverseSigmoidSettings, ctx: BuildContext) -> ReverseSigmoidStep:
    assert settings.beta is not None
    return ReverseSigmoidStep(settings.beta, settings.gamma)
