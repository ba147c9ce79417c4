"""Atli et al.'s OOD filter in the service: score each query, act on those flagged.

The filter (`defense.ood`) was fitted on float32 features. When its backbone is the served
victim itself, the batch's own penultimate features can be scored with no second forward pass,
but only if they were computed in float32: under bf16 autocast (the service's default where the
hardware has it) they are not the features the filter was fitted on, and scores near the
threshold flip. Then the step runs the filter's float32 backbone on the batch instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from defense.features import fingerprint
from defense.ood import OODFilter
from defense.perturbations import Action, apply_action
from defense.registry import BuildContext, DefenseSettings, register_defense
from shared.device import bf16_supported
from shared.pipeline import AnswerBatch

log = logging.getLogger(__name__)


class OODSettings(DefenseSettings):
    """`VICTIM_OOD_DETECTOR` (an artefact of `defense train-ood`) switches it on."""

    detector: Path | None = Field(None, description="filter artefact; setting it switches it on")
    action: Action = "shuffle"

    sweeps: ClassVar = ({"action": "shuffle"}, {"action": "reject"}, {"action": "label"})
    """The detector path comes from the evaluator's `--ood`: there is no default filter."""


@dataclass
class OODFilterStep:
    """Pipeline step: score each row, flag those above the threshold, act on them.

    `reuse_features` is set only when the filter's backbone is the served victim and the
    victim runs in float32: then the batch's own features are the ones the filter was fitted on.
    """

    filter: OODFilter
    action: str = "shuffle"
    seed: int = 0
    reuse_features: bool = False
    name: str = "ood"
    stateful: bool = False
    """A function of the batch alone (the shuffle is seeded by each row's pixels): the service's
    model threads run it at once, outside the lock of PRADA and the seeded noise."""

    def scores(self, batch: AnswerBatch) -> np.ndarray:
        if self.reuse_features:
            return self.filter.score_features(batch.features)
        return self.filter.score_images(batch.inputs)

    def __call__(self, batch: AnswerBatch) -> AnswerBatch:
        flagged = torch.from_numpy(self.filter.flag(self.scores(batch)))
        batch = batch.replace(flags={**batch.flags, self.name: flagged})
        return apply_action(batch, flagged, self.action, self.seed, self.name)


@register_defense("ood", settings=OODSettings, switch="detector", order=10)
def build(settings: OODSettings, ctx: BuildContext) -> OODFilterStep:
    assert settings.detector is not None
    ood = OODFilter.load(settings.detector, ctx.device)
    if ood.meta.get("in_dataset") not in (None, ctx.card.dataset):
        log.warning(
            "OOD detector %s was trained on %s but the victim on %s",
            settings.detector, ood.meta.get("in_dataset"), ctx.card.dataset,
        )  # fmt: skip
    same_victim = ood.backbone.fingerprint == fingerprint(ctx.model)
    float32_victim = not (ctx.amp and bf16_supported(ctx.device))
    reuse = same_victim and float32_victim
    if not reuse and ctx.trace:
        ood.backbone.trace()
    return OODFilterStep(ood, settings.action, ctx.seed, reuse_features=reuse)
