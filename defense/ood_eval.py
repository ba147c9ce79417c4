"""Measure the OOD filter against its baselines under attacker-side transforms.

The attacker chooses how its queries are encoded; a filter that separates its two sources by
their resize or compression artefacts falls apart when the attacker re-encodes. So every
figure is taken once per transform (`shared.transforms`), applied to the attacker's images and
to the benign test images alike (benign clients re-encode too), at the filter's own threshold,
and the table reports the worst case. Results are data first (dicts ready for JSON); the
Markdown tables are generated from them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from defense.baselines import BASELINES, KNN, BaselineFit, baseline_scores
from defense.features import Backbone, cached_features
from defense.ood import OODFilter, native_arrays, threshold_for_tnr
from shared.checkpoint import load_checkpoint
from shared.datasets import ImageDataset, load_dataset
from shared.transforms import dataset_jpeg_quality, parse_transform

BASELINE_TITLES = {
    "msp": "Max softmax",
    "odin": "ODIN",
    "mahalanobis": "Mahalanobis",
    "energy": "Energy",
    "knn": "kNN",
}


def detection_metrics(in_scores: np.ndarray, out_scores: np.ndarray, threshold: float) -> dict:
    """Scores are "higher = more out-of-distribution"; a row is flagged when score > threshold.

    TPR: attacker (out) rows flagged; TNR: benign (in) rows passed; AUROC; FPR at 95% TPR;
    TPR at TNR 95% (threshold set on these in-distribution scores).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    scores = np.concatenate([in_scores, out_scores])
    fpr, tpr, _ = roc_curve(labels, scores)
    t95 = threshold_for_tnr(in_scores, 0.95)
    return {
        "tpr": float(np.mean(out_scores > threshold)),
        "tnr": float(np.mean(in_scores <= threshold)),
        "threshold": float(threshold),
        "auroc": float(roc_auc_score(labels, scores)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
        "tpr_at_tnr_95": float(np.mean(out_scores > t95)),
        "tnr_at_tnr_95": float(np.mean(in_scores <= t95)),
    }


def subsample(n: int, limit: int | None, seed: int) -> np.ndarray:
    """`limit` sorted indices out of `n`, seeded; all of them when `limit` is None or large."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def in_jpeg_quality(dataset: ImageDataset) -> int | None:
    """The in-distribution files' JPEG quality (for `match-in`); None when not JPEG files."""
    paths = getattr(dataset, "paths", None)
    return dataset_jpeg_quality(paths) if paths else None


def worst_case(per_transform: dict) -> dict:
    """The worst TPR, TNR and AUROC over the transforms, and which transform gave each."""
    items = list(per_transform.items())
    worst: dict = {}
    for key in ("tpr", "tnr", "auroc"):
        name, row = min(items, key=lambda item: item[1][key])
        worst[f"worst_{key}"] = row[key]
        worst[f"worst_{key}_transform"] = name
    return worst


def evaluate_ood(
    detector: str | Path,
    victim: str | Path | None,
    in_dataset: str,
    attack_pool: str,
    *,
    transforms: Sequence[str] = ("none",),
    attack_limit: int | None = 10_000,
    attack_split: str = "train",
    in_limit: int | None = None,
    baselines: bool = True,
    filter_knn: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """The filter's TPR/TNR at its own threshold, AUROC and FPR@95TPR per transform, beside
    the baselines on the victim (thresholded at the filter's TNR of that transform, "matched",
    and at TNR 95%).

    Benign: the in-distribution test split (`in_limit` images). Attacker: `attack_limit`
    images (seeded sample) of the attack pool, which the filter never saw. The top-level
    `tpr`/`tnr`/`auroc`/... keys are those of the first transform (`none` by default); the
    `worst_*` keys the worst over all of them.

    `filter_knn` adds kNN (Sun et al.) on the filter's own backbone features, fitted on the
    in-distribution's training split (no outliers, no regression): does the regression on the
    defender's out-set add anything over plain feature distance? `tpr_by_attack_class` gives
    the TPR per class of the attack pool, which shows what the filter cannot see (an attacker
    class that shows the victim's own classes).
    """
    parsed = [parse_transform(t) for t in transforms]  # fail fast on a bad spec
    if not parsed:
        parsed = [parse_transform("none")]
    start = time.perf_counter()
    ood = OODFilter.load(detector, device)
    model = card = None
    if victim is not None:
        model, card = load_checkpoint(victim, device)
    elif baselines:
        raise ValueError("the baselines need the victim checkpoint")
    size = card.input_size if card is not None else ood.input_size
    benign_set = load_dataset(in_dataset, "test", size=in_limit, image_size=size, seed=seed)
    attack_set = load_dataset(
        attack_pool, attack_split, size=attack_limit, image_size=size, seed=seed
    )
    benign_idx = subsample(len(benign_set), in_limit, seed)
    attack_idx = subsample(len(attack_set), attack_limit, seed)
    benign_src = native_arrays(benign_set, size, benign_idx.tolist())
    attack_src = native_arrays(attack_set, size, attack_idx.tolist())
    quality = in_jpeg_quality(benign_set)

    fitted = None
    if baselines:
        assert model is not None and card is not None
        victim_net = Backbone(model, f"victim:{victim}", size, arch=card.arch)
        train_set = load_dataset(in_dataset, "train", image_size=size, seed=seed)
        train_feats = cached_features(
            victim_net, f"{in_dataset}-train-{size}", train_set.arrays(size), progress=progress
        )
        fitted = BaselineFit.fit(train_feats, np.asarray(train_set.targets))
        for p in model.parameters():  # ODIN needs input gradients, not weight gradients
            p.requires_grad_(False)

    knn = None
    if filter_knn:
        train_set = load_dataset(in_dataset, "train", image_size=size, seed=seed)
        bank = cached_features(
            ood.backbone, f"{in_dataset}-train-{size}", train_set.arrays(size), progress=progress
        )
        knn = KNN.fit(bank)
    attack_targets = np.asarray(attack_set.targets)[attack_idx]
    per_transform: dict[str, dict] = {}
    for transform in parsed:
        benign = transform.apply_many(benign_src, size, quality)
        attack = transform.apply_many(attack_src, size, quality)
        tag = f"{transform.spec}-q{quality}-s{seed}"
        key_in = f"{in_dataset}-test-{size}-n{len(benign)}-{tag}"
        key_out = f"{attack_pool}-{attack_split}-{size}-n{len(attack)}-{tag}"
        f_in = cached_features(ood.backbone, key_in, benign, progress=progress)
        f_out = cached_features(ood.backbone, key_out, attack, progress=progress)
        scores_out = ood.score_features(f_out)
        row = detection_metrics(ood.score_features(f_in), scores_out, ood.threshold)
        flagged = scores_out > ood.threshold
        row["tpr_by_attack_class"] = {
            name: float(flagged[attack_targets == c].mean())
            for c, name in enumerate(attack_set.classes)
            if np.any(attack_targets == c)
        }
        if knn is not None:
            k_in, k_out = -knn.score(f_in), -knn.score(f_out)
            row["filter_knn"] = detection_metrics(k_in, k_out, threshold_for_tnr(k_in, row["tnr"]))
        if fitted is not None:
            assert model is not None
            s_in = baseline_scores(model, fitted, benign, progress=progress)
            s_out = baseline_scores(model, fitted, attack, progress=progress)
            row["baselines"] = {}
            for name in BASELINES:
                o_in, o_out = -s_in[name], -s_out[name]  # higher = more out-of-distribution
                matched = threshold_for_tnr(o_in, row["tnr"])
                row["baselines"][name] = detection_metrics(o_in, o_out, matched)
        per_transform[transform.spec] = row
    first = per_transform[parsed[0].spec]
    return {
        **first,
        **worst_case(per_transform),
        "transforms": [t.spec for t in parsed],
        "per_transform": per_transform,
        "in_jpeg_quality": quality,
        "detector": str(detector),
        "backbone": ood.meta.get("backbone", ood.backbone.spec),
        "detector_meta": {k: v for k, v in ood.meta.items() if k != "logistic"},
        "victim": None if victim is None else str(victim),
        "victim_test_accuracy": None if card is None else card.test_accuracy,
        "in_dataset": in_dataset,
        "attack_pool": attack_pool,
        "attack_split": attack_split,
        "n_benign": int(len(benign_src)),
        "n_attack": int(len(attack_src)),
        "seed": seed,
        "seconds": time.perf_counter() - start,
    }


def ood_markdown(result: dict) -> str:
    """A worst-case table over the transforms, then the paper's Table 4 shape per transform."""
    per = result["per_transform"]
    names = [n for n in BASELINES if "baselines" in next(iter(per.values()))]
    lines = [
        f"In-distribution: {result['in_dataset']} test ({result['n_benign']} images); "
        f"attacker: {result['attack_pool']} ({result['n_attack']} images); "
        f"filter backbone: `{result['backbone']}`; victim: `{result['victim']}`. Each "
        "transform is applied to the attacker's and the benign images alike.",
        "",
        "| Transform | TPR | TNR | AUROC | FPR @ 95% TPR | TPR @ TNR 95% | "
        + " | ".join(f"{BASELINE_TITLES[n]} TPR" for n in names)
        + (" |" if names else "|"),
        "|---|---|---|---|---|---|" + "---|" * len(names),
    ]
    for spec, m in per.items():
        cells = [f"{m['baselines'][n]['tpr']:.3f}" for n in names]
        lines.append(
            f"| {spec} | {m['tpr']:.3f} | {m['tnr']:.3f} | {m['auroc']:.3f} | "
            f"{m['fpr_at_95_tpr']:.3f} | {m['tpr_at_tnr_95']:.3f} | "
            + " | ".join(cells)
            + (" |" if cells else "|")
        )
    worst_cells = [f"{min(m['baselines'][n]['tpr'] for m in per.values()):.3f}" for n in names]
    lines.append(
        f"| **worst** | **{result['worst_tpr']:.3f}** | **{result['worst_tnr']:.3f}** | "
        f"**{result['worst_auroc']:.3f}** | | | "
        + " | ".join(worst_cells)
        + (" |" if worst_cells else "|")
    )
    lines += [
        "",
        "TPR/TNR at the filter's own threshold; each baseline's TPR at the filter's TNR for that "
        "transform (matched).",
    ]
    if names:
        lines += [
            "",
            "| Transform | Method | AUROC | FPR @ 95% TPR | TPR @ TNR 95% |",
            "|---|---|---|---|---|",
        ]
        for spec, m in per.items():
            for n in names:
                b = m["baselines"][n]
                lines.append(
                    f"| {spec} | {BASELINE_TITLES[n]} | {b['auroc']:.3f} | "
                    f"{b['fpr_at_95_tpr']:.3f} | {b['tpr_at_tnr_95']:.3f} |"
                )
    return "\n".join(lines)
