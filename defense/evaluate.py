"""Measure the defenses: the OOD filter against its baselines, and what each defense costs users.

Results are data first (dicts ready for JSON); the Markdown tables are generated from them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defense.baselines import BASELINES, baseline_scores
from defense.features import Backbone, cached_features
from defense.ood import OODFilter, threshold_for_tnr
from defense.registry import BuildContext, build_steps, defenses, get_defense, read_all
from shared.checkpoint import load_checkpoint
from shared.datasets import load_dataset
from shared.pipeline import Blackbox, Granularity

BASELINE_TITLES = {
    "msp": "Max softmax",
    "odin": "ODIN",
    "mahalanobis": "Mahalanobis",
    "energy": "Energy",
}


# --------------------------------------------------------------------------- metrics


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


def _subsample(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


# --------------------------------------------------------------------------- OOD evaluation


def evaluate_ood(
    detector: str | Path,
    victim: str | Path,
    in_dataset: str,
    attack_pool: str,
    *,
    attack_limit: int | None = 10_000,
    attack_split: str = "train",
    in_limit: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """The filter's TPR/TNR at its own threshold, AUROC and FPR@95TPR, beside the baselines.

    Benign: the in-distribution test split. Attacker: `attack_limit` images (seeded sample) of
    the attack pool, which the filter never saw. The baselines run on the victim and are
    thresholded at the filter's measured TNR ("matched") and at TNR 95%.
    """
    start = time.perf_counter()
    ood = OODFilter.load(detector, device)
    model, card = load_checkpoint(victim, device)
    size = card.input_size
    benign_set = load_dataset(in_dataset, "test", size=in_limit, image_size=size, seed=seed)
    attack_set = load_dataset(
        attack_pool, attack_split, size=attack_limit, image_size=size, seed=seed
    )
    benign_idx = _subsample(len(benign_set), in_limit, seed)
    attack_idx = _subsample(len(attack_set), attack_limit, seed)
    benign = benign_set.arrays(size)[benign_idx]
    attack = attack_set.arrays(size)[attack_idx]

    key_in = f"{in_dataset}-test-{size}-n{len(benign)}-s{seed}"
    key_out = f"{attack_pool}-{attack_split}-{size}-n{len(attack)}-s{seed}"
    f_in = cached_features(ood.backbone, key_in, benign, progress=progress)
    f_out = cached_features(ood.backbone, key_out, attack, progress=progress)
    filt = detection_metrics(ood.score_features(f_in), ood.score_features(f_out), ood.threshold)

    victim_net = Backbone(model, f"victim:{victim}", size, arch=card.arch)
    train_set = load_dataset(in_dataset, "train", image_size=size, seed=seed)
    train_feats = cached_features(
        victim_net, f"{in_dataset}-train-{size}", train_set.arrays(size), progress=progress
    )
    for p in model.parameters():  # ODIN needs input gradients, not weight gradients
        p.requires_grad_(False)
    s_in = baseline_scores(model, train_feats, train_set.targets, benign, progress=progress)
    s_out = baseline_scores(model, train_feats, train_set.targets, attack, progress=progress)
    baselines = {}
    for name in BASELINES:
        o_in, o_out = -s_in[name], -s_out[name]  # higher = more out-of-distribution
        matched = threshold_for_tnr(o_in, filt["tnr"])
        baselines[name] = detection_metrics(o_in, o_out, matched)
    return {
        **filt,
        "detector": str(detector),
        "backbone": ood.meta.get("backbone", ood.backbone.spec),
        "detector_meta": {k: v for k, v in ood.meta.items() if k != "logistic"},
        "victim": str(victim),
        "victim_test_accuracy": card.test_accuracy,
        "in_dataset": in_dataset,
        "attack_pool": attack_pool,
        "attack_split": attack_split,
        "n_benign": int(len(benign)),
        "n_attack": int(len(attack)),
        "seed": seed,
        "baselines": baselines,
        "seconds": time.perf_counter() - start,
    }


def ood_markdown(result: dict) -> str:
    """Two tables: full metrics per method, and the paper's Table 4 shape (TPR/TNR cells)."""
    rows = [("OOD filter (ours)", result)] + [
        (BASELINE_TITLES[n], result["baselines"][n]) for n in BASELINES
    ]
    lines = [
        f"In-distribution: {result['in_dataset']} test ({result['n_benign']} images); "
        f"attacker: {result['attack_pool']} ({result['n_attack']} images); "
        f"filter backbone: `{result['backbone']}`; victim: `{result['victim']}`.",
        "",
        "| Method | TPR | TNR | TPR @ TNR 95% | AUROC | FPR @ 95% TPR |",
        "|---|---|---|---|---|---|",
    ]
    for title, m in rows:
        lines.append(
            f"| {title} | {m['tpr']:.3f} | {m['tnr']:.3f} | {m['tpr_at_tnr_95']:.3f} | "
            f"{m['auroc']:.3f} | {m['fpr_at_95_tpr']:.3f} |"
        )
    lines += [
        "",
        "TPR at the filter's threshold; the baselines' thresholds give the filter's TNR.",
        "",
        "| In-distribution | Setting | " + " | ".join(t for t, _ in rows) + " |",
        "|---|---|" + "---|" * len(rows),
        f"| {result['in_dataset']} | matched TNR | "
        + " | ".join(f"{m['tpr']:.2f}/{m['tnr']:.2f}" for _, m in rows)
        + " |",
        f"| {result['in_dataset']} | TNR 95% | "
        + " | ".join(f"{m['tpr_at_tnr_95']:.2f}/{m['tnr_at_tnr_95']:.2f}" for _, m in rows)
        + " |",
        "",
        "Cells: TPR/TNR (attacker queries caught / benign test images passed).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- benign utility


@dataclass
class UtilityConfig:
    """One defended configuration: registered defenses' settings and the output granularity."""

    name: str
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)
    """defense name -> its settings fields (see `defense.registry`)."""
    granularity: dict[str, Any] = field(default_factory=dict)
    """`Granularity` fields: mode, top_k, decimals."""


def _label(name: str, values: dict[str, Any]) -> str:
    shown = [
        f"{k}={v}" for k, v in values.items() if not isinstance(v, Path | str) or k == "action"
    ]
    return f"{name}({','.join(shown)})" if shown else name


def default_configs(
    ood: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    round_decimals: int = 2,
) -> list[UtilityConfig]:
    """No defense, each registered defense at each of its default sweeps, the granularities,
    and everything at once. `overrides` (defense -> fields) replace a defense's defaults;
    `ood` is the filter artefact (the OOD rows need one)."""
    overrides = {name: dict(v) for name, v in (overrides or {}).items()}
    for name in overrides:
        get_defense(name)
    if ood is not None:
        overrides.setdefault("ood", {}).setdefault("detector", Path(ood))
    configs = [UtilityConfig("none")]
    everything: dict[str, dict[str, Any]] = {}
    for d in defenses():
        for sweep in d.settings.sweeps or ({},):
            values = {**sweep, **overrides.get(d.name, {})}
            if not d.enabled(d.read(values, env=False)):
                continue  # e.g. the OOD filter without an artefact
            configs.append(UtilityConfig(_label(d.name, values), {d.name: values}))
            everything.setdefault(d.name, values)
    configs += [
        UtilityConfig(f"round({round_decimals})", granularity={"decimals": round_decimals}),
        UtilityConfig("top-1", granularity={"mode": "topk", "top_k": 1}),
        UtilityConfig("label-only", granularity={"mode": "label"}),
        UtilityConfig("all", everything, {"decimals": round_decimals}),
    ]
    return configs


def evaluate_utility(
    victim: str | Path,
    dataset: str,
    configs: list[UtilityConfig],
    *,
    limit: int | None = None,
    clients: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Benign accuracy through the defended black box (the service's own steps), per defense.

    The test split is sent in batches of `batch_size`, round-robin from `clients` benign clients
    (stateful defenses see each client's own stream). Refused rows count as wrong. The steps are
    built by the registry exactly as the service builds them (float32, no autocast).
    """
    from tqdm.auto import tqdm

    dev = torch.device(device)
    model, card = load_checkpoint(victim, dev)
    test = load_dataset(dataset, "test", size=limit, image_size=card.input_size, seed=seed)
    index = _subsample(len(test), limit, seed)
    images = test.arrays(card.input_size)[index]
    targets = np.asarray(test.targets)[index]
    order = np.random.default_rng(seed).permutation(len(images))
    images, targets = images[order], targets[order]
    owners = [f"benign-{i % clients}" for i in range(len(images))]
    context = BuildContext(model, card, dev, amp=False, seed=seed)
    results = []
    for config in tqdm(configs, desc="defenses", disable=not progress):
        settings = read_all(config.defenses, env=False)
        steps = build_steps(settings, context)
        blackbox = Blackbox(model, card.input_size, steps, Granularity(**config.granularity), dev)
        correct = refused = 0
        flagged: dict[str, int] = {}
        start = time.perf_counter()
        for s in range(0, len(images), batch_size):
            batch = blackbox.answer(images[s : s + batch_size], owners[s : s + batch_size])
            rows = blackbox.granularity.format(batch)
            rejected = batch.mask("rejected").tolist()
            for row, target, no in zip(rows, targets[s : s + batch_size], rejected, strict=True):
                refused += int(no)
                correct += int(not no and row.label == int(target))
            for name, mask in batch.flags.items():
                flagged[name] = flagged.get(name, 0) + int(mask.sum())
        seconds = time.perf_counter() - start
        used = {name: settings[name].model_dump(mode="json") for name in config.defenses}
        results.append(
            {
                "defense": config.name,
                "settings": {
                    **used,
                    **({"granularity": config.granularity} if config.granularity else {}),
                },
                "accuracy": correct / len(images),
                "refused": refused / len(images),
                "flagged": {k: v / len(images) for k, v in flagged.items()},
                "images_per_second": len(images) / seconds,
            }
        )
    return {
        "victim": str(victim),
        "dataset": dataset,
        "n_images": int(len(images)),
        "clients": clients,
        "batch_size": batch_size,
        "seed": seed,
        "results": results,
    }


def utility_markdown(result: dict) -> str:
    base = next((r for r in result["results"] if r["defense"] == "none"), None)
    lines = [
        f"Benign accuracy on {result['dataset']} test ({result['n_images']} images, "
        f"{result['clients']} clients, batches of {result['batch_size']}).",
        "",
        "| Defense | Accuracy | Change | Refused | Flagged | Images/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        change = r["accuracy"] - base["accuracy"] if base else float("nan")
        flags = ", ".join(f"{k} {v:.3f}" for k, v in r["flagged"].items()) or "-"
        lines.append(
            f"| {r['defense']} | {r['accuracy']:.4f} | {change:+.4f} | {r['refused']:.3f} | "
            f"{flags} | {r['images_per_second']:.0f} |"
        )
    return "\n".join(lines)
