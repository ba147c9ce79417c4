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

from defense import cache
from defense.features import (
    Backbone,
    cached_features,
    defender_backbone,
    embed_arrays,
    parse_spec,
    scratch_backbone,
    torchvision_backbone,
    victim_backbone,
)
from shared.checkpoint import check_writable
from shared.datasets import ImageDataset, check_dataset, load_dataset
from shared.errors import TestbedError
from shared.imaging import resize
from shared.safeload import load_weights_only, seal, unseal
from shared.transforms import dataset_jpeg_quality, random_encodings

FORMAT = "ood-filter/1"


def logistic_scores(
    features: torch.Tensor | np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    coef: np.ndarray,
    intercept: float,
) -> np.ndarray:
    """P(out) of a standardized logistic regression (`fit_logistic`'s output) for each row."""
    f = np.asarray(features, dtype=np.float64)
    z = ((f - mean) / scale) @ coef + intercept
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


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
        return logistic_scores(features, self.mean, self.scale, self.coef, self.intercept)

    def score_images(self, x: torch.Tensor) -> np.ndarray:
        """P(out) for a float [0, 1] batch (B, 3, H, W) at any size."""
        return self.score_features(self.backbone.embed(x))

    def score_images_uint8(self, images: np.ndarray) -> np.ndarray:
        """P(out) for a uint8 (N, H, W, 3) array, in batches."""
        return self.score_features(embed_arrays(self.backbone, images, progress=False))

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
        torch.save(seal(payload), tmp)
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
        payload = unseal(payload, path, "OOD detector")
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


def native_arrays(dataset: ImageDataset, size: int, indices: list[int] | None = None) -> np.ndarray:
    """The images (all, or `indices`) at their own side: the first image's, at least `size`,
    at most 4x `size`.

    Encodings and attacker transforms start from the source image, as they would in the wild;
    a 64-px Tiny-ImageNet file is not first squeezed to the victim's 32 px.
    """
    side = int(max(dataset.image(0).shape[:2])) if len(dataset) else size
    return dataset.arrays(min(max(side, size), 4 * size), indices)


def encoded(
    images: np.ndarray,
    size: int,
    key: str,
    seed: int,
    progress: bool = True,
    match_in: float = 0.0,
    in_quality: int | None = None,
) -> np.ndarray:
    """`random_encodings` of `images`, cached on disk by the images' digest, labelled `key`
    (they take a minute at 50k)."""
    if match_in > 0:
        key += f"-m{match_in:g}q{in_quality}"
    return cache.cached_array(
        "encodings", key, images, f"{size}-s{seed}",
        lambda: random_encodings(images, size, seed, progress, match_in, in_quality),
    )  # fmt: skip


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
    pretrain_epochs: int = 4,
    encodings: bool = True,
    variants: int = 1,
    match_in: float = 0.0,
    backbone_size: int | None = None,
    pretrain_limit: int | None = None,
    fit_limit: int | None = None,
    torchvision_size: int = 224,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainReport:
    """Train the filter and write its artefact (see the module docstring for the protocol).

    `image_size` is the side the service feeds the filter (the victim's input size; for a
    `victim:` backbone it is taken from the checkpoint). `in_size`/`out_size` set how many
    images the generated pools make (`natural`, `noise`); file datasets keep all their images.
    With `encodings` (the default) every image, in and out, is randomly re-encoded
    (`shared.transforms.random_encoding`) before anything sees it: `variants` copies each for a
    backbone trained here, one for the regression, fresh ones for the held-out threshold.
    `match_in` is the share of out-of-distribution images that first go through the
    in-distribution's own pipeline (its side, its files' JPEG quality), so the artefacts of
    the in-distribution's files stop telling the sources apart. `backbone_size` is the side a
    backbone trained here sees (a low-pass; default `image_size`).
    `pretrain_limit` caps the images per side a backbone trained here sees, `fit_limit` those
    the regression sees (both drawn from the same training part; CPU budget).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    check_dataset(in_dataset)  # names before a backbone is built or any image read
    check_dataset(out_dataset)
    check_writable(out, "OOD detector")
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
    raw_in, raw_out = native_arrays(in_set, image_size), native_arrays(out_set, image_size)
    rng = np.random.default_rng(seed)
    in_quality = dataset_jpeg_quality(getattr(in_set, "paths", None) or [])
    in_fit, in_hold = _split(len(raw_in), holdout, rng)
    out_fit, out_hold = _split(len(raw_out), holdout, rng)
    names = {"in": in_dataset, "out": out_dataset}
    raws = {"in": raw_in, "out": raw_out}

    def view(which: str, copy: int, index: np.ndarray | None = None) -> np.ndarray:
        """One side's images (all, or `index`) at `image_size`: randomly encoded (`copy` seeds
        the draw) or plainly resized."""
        images = raws[which] if index is None else raws[which][index]
        if not encodings:
            return np.stack([resize(im, image_size) for im in images])
        key = f"{names[which]}-train-enc"
        if index is not None:
            key += f"-{len(index)}of{len(raws[which])}"
        match = match_in if which == "out" else 0.0
        return encoded(images, image_size, key, seed * 1000 + copy, progress, match, in_quality)

    copies = {w: [view(w, c) for c in range(max(1, variants) if encodings else 1)] for w in raws}
    # a backbone trained here sees at most `pretrain_limit` images of each side (CPU budget)
    net_in, net_out = in_fit, out_fit
    if pretrain_limit:
        pick = np.random.default_rng([seed, 1])
        net_in = np.sort(pick.permutation(in_fit)[:pretrain_limit])
        net_out = np.sort(pick.permutation(out_fit)[:pretrain_limit])
    if kind in ("scratch", "defender"):
        xi = np.concatenate([c[net_in] for c in copies["in"]])
        xo = np.concatenate([c[net_out] for c in copies["out"]])
        if kind == "scratch":
            net = scratch_backbone(
                value, xi, xo, epochs=scratch_epochs, seed=seed, side=backbone_size,
                device=device, progress=progress,
            )  # fmt: skip
        else:
            reps = len(copies["in"])
            yi = np.tile(np.asarray(in_set.targets)[net_in], reps)
            yo = np.tile(np.asarray(out_set.targets)[net_out], reps)
            net = defender_backbone(
                value, xi, yi, xo, yo, in_classes=len(in_set.classes), epochs=pretrain_epochs,
                seed=seed, side=backbone_size, device=device, progress=progress,
            )  # fmt: skip
    assert net is not None

    def feats(which: str, images: np.ndarray, tag: str) -> np.ndarray:
        key = f"{names[which]}-train-{image_size}-s{seed}-{tag}-e{int(encodings)}"
        if which == "out" and encodings and match_in > 0:
            key += f"-m{match_in:g}"
        return cached_features(net, key, images, progress=progress)

    # the regression sees at most `fit_limit` images of each side (its CV fits dominate on CPU)
    reg_in, reg_out = in_fit, out_fit
    if fit_limit:
        pick = np.random.default_rng([seed, 2])
        reg_in = np.sort(pick.permutation(in_fit)[:fit_limit])
        reg_out = np.sort(pick.permutation(out_fit)[:fit_limit])
    f_in = feats("in", copies["in"][0][reg_in], f"fit{len(reg_in)}")
    f_out = feats("out", copies["out"][0][reg_out], f"fit{len(reg_out)}")
    mean, scale, coef, intercept, info = fit_logistic(f_in, f_out, folds=folds, seed=seed)
    ood = OODFilter(net, mean, scale, coef, intercept, threshold=0.5)
    # the threshold: held-out in-distribution images, re-encoded afresh (the same random ways)
    hold_in, hold_out = view("in", 999, in_hold), view("out", 999, out_hold)
    s_hold_in = ood.score_features(feats("in", hold_in, "hold"))
    threshold = threshold_for_tnr(s_hold_in, target_tnr)
    ood.threshold = threshold
    heldout_tnr = float(np.mean(~ood.flag(s_hold_in)))
    heldout_tpr = float(np.mean(ood.flag(ood.score_features(feats("out", hold_out, "hold")))))
    plain_in = np.stack([resize(im, image_size) for im in raw_in[in_hold]])
    plain_tnr = float(np.mean(~ood.flag(ood.score_images_uint8(plain_in))))
    ood.meta = {
        "in_dataset": in_dataset,
        "out_dataset": out_dataset,
        "backbone": backbone,
        "image_size": image_size,
        "target_tnr": target_tnr,
        "holdout": holdout,
        "encodings": encodings,
        "variants": variants if encodings else 1,
        "match_in": match_in if encodings else 0.0,
        "in_jpeg_quality": in_quality,
        "backbone_size": net.input_size,
        "pretrain_limit": pretrain_limit,
        "fit_limit": fit_limit,
        "n_in_backbone": int(len(net_in)) if kind in ("scratch", "defender") else 0,
        "n_out_backbone": int(len(net_out)) if kind in ("scratch", "defender") else 0,
        "n_in_fit": int(len(reg_in)),
        "n_out_fit": int(len(reg_out)),
        "n_in_holdout": int(len(in_hold)),
        "n_out_holdout": int(len(out_hold)),
        "heldout_tnr": heldout_tnr,
        "heldout_tpr": heldout_tpr,
        "heldout_tnr_unencoded": plain_tnr,
        "seed": seed,
        "logistic": info,
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu_start,
        "created_at": time.time(),
    }
    path = ood.save(out)
    return TrainReport(ood, path, heldout_tnr, heldout_tpr, time.perf_counter() - start)
