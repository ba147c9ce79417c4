"""Build the service's defense steps from its settings: OOD filter, PRADA, then perturbations.

The order matters: detectors see the model's own answer, perturbations come last so that a
flagged (shuffled) row is perturbed like any other; the granularity is applied by the service
after all steps. The same list runs in the HTTP service and in the in-process `Blackbox`.
"""

from __future__ import annotations

import logging

import torch

from defense.features import fingerprint
from defense.ood import OODFilter, OODFilterStep
from defense.perturbations import GaussianNoiseStep, ReverseSigmoidStep
from defense.prada import PradaDetector, PradaStep
from shared.checkpoint import ModelCard
from shared.models import Classifier
from shared.pipeline import Step

log = logging.getLogger(__name__)


def build_steps(settings, model: Classifier, card: ModelCard, device: torch.device) -> list[Step]:
    """The steps that `settings` (a `VictimSettings`) switch on, in pipeline order."""
    steps: list[Step] = []
    if settings.ood_detector is not None:
        ood = OODFilter.load(settings.ood_detector, device)
        same_victim = ood.backbone.fingerprint == fingerprint(model)
        if ood.meta.get("in_dataset") not in (None, card.dataset):
            log.warning(
                "OOD detector %s was trained on %s but the victim on %s",
                settings.ood_detector, ood.meta.get("in_dataset"), card.dataset,
            )  # fmt: skip
        steps.append(
            OODFilterStep(ood, settings.ood_action, settings.seed, reuse_features=same_victim)
        )
    if settings.prada_threshold is not None:
        detector = PradaDetector(
            settings.prada_threshold,
            settings.prada_min_queries,
            settings.prada_history,
            settings.prada_max_clients,
        )
        steps.append(PradaStep(detector, settings.prada_action, settings.seed))
    if settings.reverse_sigmoid_beta is not None:
        steps.append(
            ReverseSigmoidStep(settings.reverse_sigmoid_beta, settings.reverse_sigmoid_gamma)
        )
    if settings.noise_std is not None:
        steps.append(GaussianNoiseStep(settings.noise_std, settings.seed))
    return steps
