"""Atli et al.'s OOD filter: frozen backbone features -> logistic regression -> a threshold.

Training (`train_ood`): features of the in-distribution images (the victim's training data) and
of other natural images (the defender's out-of-distribution set) are computed once and cached;
an L2 logistic regression (L-BFGS) is fitted with its regularization chosen by k-fold
cross-validation; the decision threshold is the score quantile that passes `target_tnr` of
held-out in-distribution images, which neither the backbone nor the regression have seen.
The artefact holds the backbone's weights too, so the service needs nothing else.

Serving: `defense/defenses/ood_filter.py` (the registered `ood` defense).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from defense.features import (
    Backbone,
    cached_features,
    parse_spec,
    scratch_backbone,
    torchvision_backbone,
    victim_backbone,
)
from shared.datasets import load_dataset
from shared.errors import TestbedError
from shared.safeload import load_weights_only

FORMAT = "ood-filter/1"


@dataclass
class OODFilter:
    """Backbone + standardization + logistic regression; score = P(out of distribution)."""

    backbone: Backbone
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float
    meta: dict = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return int(self.meta.get("image_size", self.backbone.input_size))

    def score_features(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        """P(out) for each row of backbone features."""
        f = np.asarray(features, dtype=np.float64)
        z = ((f - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def score_images(self, x: torch.Tensor) -> np.ndarray:
        """P(out) for a float [0, 1] batch (B, 3, H, W) at any size."""
        return self.score_features(self.backbone.embed(x))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return scores > self.threshold

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "backbone": self.backbone.to_dict(),
            "mean": torch.from_numpy(np.asarray(self.mean, dtype=np.float64)),
            "scale": torch.from_numpy(np.asarray(self.scale, dtype=np.float64)),
            "coef": torch.from_numpy(np.asarray(self.coef, dtype=np.float64)),
            "intercept": float(self.intercept),
            "threshold": float(self.threshold),
            "meta": self.meta,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> OODFilter:
        path = Path(path)
        if not path.exists():
            raise TestbedError(
                f"OOD detector {path} does not exist; train one with `defense train-ood`"
            )
        payload = load_weights_only(path, "OOD detector")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise TestbedError(f"{path} is not an OOD detector of this project ({FORMAT})")
        try:
            return cls(
                backbone=Backbone.from_dict(payload["backbone"], device),
                mean=payload["mean"].numpy(),
                scale=payload["scale"].numpy(),
                coef=payload["coef"].numpy(),
                intercept=float(payload["intercept"]),
                threshold=float(payload["threshold"]),
                meta=dict(payload["meta"]),
            )
        except TestbedError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise TestbedError(f"OOD detector {path} is incomplete or altered: {exc!r}") from None


def fit_logistic(
    x_in: np.ndarray, x_out: np.ndarray, folds: int = 10, seed: int = 0, max_iter: int = 500
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict]:
    """L2 logistic regression (L-BFGS), C chosen by stratified k-fold CV on the log loss.

    Returns (mean, scale, coef, intercept, info); classes are weighted to balance in and out.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.concatenate([x_in, x_out]).astype(np.float64)
    y = np.concatenate([np.zeros(len(x_in)), np.ones(len(x_out))]).astype(int)
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = LogisticRegressionCV(
        Cs=np.logspace(-4, 2, 7),
        l1_ratios=(0.0,),  # pure L2
        cv=cv,
        solver="lbfgs",
        scoring="neg_log_loss",
        class_weight="balanced",
        max_iter=max_iter,
        n_jobs=1,
        use_legacy_attributes=False,
    )
    # one BLAS thread: the many small L-BFGS fits run ~50x slower when BLAS threads fight
    # over a few shared cores (measured on the 2-core dev machine)
    with threadpool_limits(limits=1):
        model.fit((x - scaler.mean_) / scale, y)
    cs = [float(c) for c in np.ravel(model.Cs_)]
    info = {"C": float(np.ravel(model.C_)[0]), "cs": cs, "folds": folds}
    return scaler.mean_, scale, model.coef_.ravel(), float(model.intercept_[0]), info


def threshold_for_tnr(in_scores: np.ndarray, target_tnr: float) -> float:
    """The smallest threshold that passes at least `target_tnr` of these in-distribution scores."""
    ordered = np.sort(np.asarray(in_scores, dtype=np.float64))
    index = min(len(ordered) - 1, max(0, int(np.ceil(target_tnr * len(ordered))) - 1))
    return float(ordered[index])


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_hold = max(1, int(round(n * fraction)))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


@dataclass
class TrainReport:
    filter: OODFilter
    path: Path
    heldout_tnr: float
    heldout_tpr: float
    seconds: float


def train_ood(
    in_dataset: str,
    out_dataset: str,
    backbone: str,
    out: str | Path,
    *,
    target_tnr: float = 0.95,
    image_size: int | None = None,
    holdout: float = 0.1,
    folds: int = 10,
    in_size: int | None = None,
    out_size: int | None = None,
    scratch_epochs: int = 6,
    torchvision_size: int = 224,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainReport:
    """Train the filter and write its artefact (see the module docstring for the protocol).

    `image_size` is the side the service feeds the filter (the victim's input size; for a
    `victim:` backbone it is taken from the checkpoint). `in_size`/`out_size` set how many
    images the generated pools make (`natural`, `noise`); file datasets keep all their images.
    """
    start = time.perf_counter()
    kind, value = parse_spec(backbone)
    device = torch.device(device)
    net: Backbone | None = None
    if kind == "victim":
        net = victim_backbone(value, device)
        image_size = image_size or net.input_size
    elif kind == "torchvision":  # before any data is read: fail fast when offline
        net = torchvision_backbone(value, torchvision_size, device)
    image_size = image_size or 32
    in_set = load_dataset(in_dataset, "train", size=in_size, image_size=image_size, seed=seed)
    out_set = load_dataset(out_dataset, "train", size=out_size, image_size=image_size, seed=seed)
    x_in, x_out = in_set.arrays(image_size), out_set.arrays(image_size)
    rng = np.random.default_rng(seed)
    in_fit, in_hold = _split(len(x_in), holdout, rng)
    out_fit, out_hold = _split(len(x_out), holdout, rng)
    if kind == "scratch":
        net = scratch_backbone(
            value, x_in[in_fit], x_out[out_fit], epochs=scratch_epochs, seed=seed,
            device=device, progress=progress,
        )  # fmt: skip
    assert net is not None

    def feats(name: str, images: np.ndarray, split: str) -> np.ndarray:
        key = f"{name}-train-{image_size}-s{seed}-{split}-h{holdout}"
        return cached_features(net, key, images, progress=progress)

    f_in = feats(in_dataset, x_in, "all")
    f_out = feats(out_dataset, x_out, "all")
    mean, scale, coef, intercept, info = fit_logistic(
        f_in[in_fit], f_out[out_fit], folds=folds, seed=seed
    )
    ood = OODFilter(net, mean, scale, coef, intercept, threshold=0.5)
    threshold = threshold_for_tnr(ood.score_features(f_in[in_hold]), target_tnr)
    ood.threshold = threshold
    heldout_tnr = float(np.mean(~ood.flag(ood.score_features(f_in[in_hold]))))
    heldout_tpr = float(np.mean(ood.flag(ood.score_features(f_out[out_hold]))))
    ood.meta = {
        "in_dataset": in_dataset,
        "out_dataset": out_dataset,
        "backbone": backbone,
        "image_size": image_size,
        "target_tnr": target_tnr,
        "holdout": holdout,
        "n_in_fit": int(len(in_fit)),
        "n_out_fit": int(len(out_fit)),
        "n_in_holdout": int(len(in_hold)),
        "n_out_holdout": int(len(out_hold)),
        "heldout_tnr": heldout_tnr,
        "heldout_tpr": heldout_tpr,
        "seed": seed,
        "logistic": info,
        "created_at": time.time(),
    }
    path = ood.save(out)
    return TrainReport(ood, path, heldout_tnr, heldout_tpr, time.perf_counter() - start)
