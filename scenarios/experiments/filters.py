"""Atli et al.'s OOD filter for the experiments: trained once per configuration through
`defense.ood.train_ood` (its public API; the service loads it from `VICTIM_OOD_DETECTOR`), and
what it flags among the images an attacker sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from attacker.transfer import load_transfer_set
from defense import cache as defense_cache
from scenarios.experiments.cache import cached_path, making


@dataclass(frozen=True)
class FilterSpec:
    """The filter's training configuration (its cache key); the defaults are `benchmarks.ood`'s
    recommended filter: a `defender:cnn5` backbone at a 16-px low-pass side, every image
    randomly re-encoded, 70% of the out-images encoded like the in-distribution's files."""

    in_dataset: str
    out_dataset: str
    backbone: str = "defender:cnn5"
    pretrain_epochs: int = 4
    match_in: float = 0.7
    backbone_size: int | None = 16
    pretrain_limit: int | None = None
    fit_limit: int | None = 3_000
    folds: int = 5
    target_tnr: float = 0.95
    image_size: int = 32
    out_size: int | None = None
    """Images of a generated out-of-distribution pool (natural); None for file datasets."""
    seed: int = 0

    def env(self, action: str = "shuffle") -> dict[str, str]:
        """The service's settings that switch this filter on (trains it first if needed)."""
        return {"VICTIM_OOD_DETECTOR": str(cached_filter(self)), "VICTIM_OOD_ACTION": action}


def filter_config(spec: FilterSpec) -> dict:
    """What a filter is cached by: its configuration and the defense side's revision (its
    encodings, features and training code; `defense.cache`)."""
    return {**asdict(spec), "defense_revision": defense_cache.REVISION}


def cached_filter(spec: FilterSpec) -> Path:
    """The filter artefact, trained once per configuration."""
    from defense.ood import train_ood

    path = cached_path("ood-filters", filter_config(spec), ".pt")
    with making(path):
        if not path.exists():
            train_ood(
                spec.in_dataset, spec.out_dataset, spec.backbone, path,
                target_tnr=spec.target_tnr, image_size=spec.image_size, folds=spec.folds,
                pretrain_epochs=spec.pretrain_epochs, match_in=spec.match_in,
                backbone_size=spec.backbone_size, pretrain_limit=spec.pretrain_limit,
                fit_limit=spec.fit_limit, out_size=spec.out_size, seed=spec.seed,
                progress=False,
            )  # fmt: skip
    return path


def flagged_fraction(spec: FilterSpec, db: Path, budget: int | None = None) -> float:
    """The share of a transfer set's queries the filter flags: the images as the service
    decoded them (stored losslessly), scored exactly as the service's `ood` step scores them."""
    from defense.ood import OODFilter

    ood = OODFilter.load(cached_filter(spec))
    images = load_transfer_set(db, budget=budget).images.permute(0, 2, 3, 1).numpy()
    return float(np.mean(ood.flag(ood.score_images_uint8(np.ascontiguousarray(images)))))
