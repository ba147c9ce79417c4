"""How much of the victim a knockoff copied: accuracy, recovery, agreement, per-class figures.

The victim is a checkpoint (evaluated in-process, undefended) or a URL (its labels are read
through the API, as any client would see them). Results are data first (a dict, saved as JSON);
the Markdown table and PNG plots are drawn from that data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from shared.checkpoint import check_same_classes, load_checkpoint
from shared.datasets import load_dataset
from shared.device import resolve_device
from shared.errors import TestbedError
from shared.training import predict_logits, to_tensor


def _victim_labels_from_url(url: str, images: np.ndarray, api_key: str | None) -> np.ndarray:
    from attacker.client import labels_via_api

    return np.asarray(labels_via_api(url, images, api_key=api_key))


def evaluate(
    knockoff: str | Path,
    victim: str | Path,
    dataset: str | None = None,
    split: str = "test",
    *,
    api_key: str | None = None,
    device: str = "auto",
    victim_labels: np.ndarray | None = None,
) -> dict:
    """Compare knockoff and victim on a labelled dataset (never used for training or selection).

    `dataset` defaults to a victim checkpoint's own; a victim behind a URL needs it named.
    `victim_labels`: the victim's labels of this split already read through its API (an audit
    compares several knockoffs and asks the owner's API once)."""
    dev = resolve_device(device)
    knock_model, knock_card = load_checkpoint(knockoff, dev)
    url = str(victim).startswith(("http://", "https://"))
    remote = victim_labels is not None or url
    victim_model, victim_card = (None, None) if remote else load_checkpoint(victim, dev)
    if dataset is None:
        if victim_card is None:
            raise TestbedError("a victim behind a URL does not say its dataset: pass --dataset")
        dataset = victim_card.dataset
    data = load_dataset(dataset, split, image_size=knock_card.input_size)
    if victim_card is not None:
        check_same_classes(victim_card, dataset, list(data.classes))
    images = data.arrays(knock_card.input_size)
    truth = data.targets
    knock_pred = predict_logits(knock_model, to_tensor(images), dev).argmax(1).numpy()
    if victim_labels is not None:
        victim_pred, victim_source = np.asarray(victim_labels), "api"
    elif url:
        victim_pred = _victim_labels_from_url(str(victim), images, api_key)
        victim_source = "api"
    else:  # a checkpoint, loaded above
        if victim_card.num_classes != knock_card.num_classes:
            raise TestbedError(
                f"the victim has {victim_card.num_classes} outputs, the knockoff "
                f"{knock_card.num_classes}: they cannot be compared"
            )
        victim_images = data.arrays(victim_card.input_size)
        victim_pred = predict_logits(victim_model, to_tensor(victim_images), dev).argmax(1).numpy()
        victim_source = "checkpoint"
    classes = list(data.classes)
    labels = np.arange(len(classes))
    victim_acc = float((victim_pred == truth).mean())
    knock_acc = float((knock_pred == truth).mean())

    def class_accuracy(pred: np.ndarray, c: int) -> float | None:
        members = truth == c
        return float((pred[members] == c).mean()) if members.any() else None

    per_class = [
        {"class": classes[c], "victim_accuracy": class_accuracy(victim_pred, c),
         "knockoff_accuracy": class_accuracy(knock_pred, c)}
        for c in labels
    ]  # fmt: skip
    return {
        "dataset": dataset,
        "split": split,
        "images": int(len(truth)),
        "victim": str(victim),
        "victim_source": victim_source,
        "knockoff": str(knockoff),
        "knockoff_arch": knock_card.arch,
        "victim_accuracy": victim_acc,
        "knockoff_accuracy": knock_acc,
        "recovery": knock_acc / victim_acc if victim_acc > 0 else float("nan"),
        "agreement": float((knock_pred == victim_pred).mean()),
        "victim_macro_accuracy": float(balanced_accuracy_score(truth, victim_pred)),
        "knockoff_macro_accuracy": float(balanced_accuracy_score(truth, knock_pred)),
        "macro_recovery": float(
            balanced_accuracy_score(truth, knock_pred)
            / max(balanced_accuracy_score(truth, victim_pred), 1e-12)
        ),
        "per_class": per_class,
        "confusion_victim_vs_knockoff": confusion_matrix(
            victim_pred, knock_pred, labels=labels
        ).tolist(),
        "classes": classes,
    }


def markdown_table(result: dict) -> str:
    rows = [
        ("victim accuracy", result["victim_accuracy"]),
        ("knockoff accuracy", result["knockoff_accuracy"]),
        ("performance recovery (knockoff / victim)", result["recovery"]),
        ("agreement with the victim (fidelity)", result["agreement"]),
        ("victim macro-averaged accuracy", result["victim_macro_accuracy"]),
        ("knockoff macro-averaged accuracy", result["knockoff_macro_accuracy"]),
    ]
    lines = [f"| {result['dataset']} {result['split']} ({result['images']} images) | value |",
             "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {value:.4f} |" for name, value in rows]
    lines += ["", "| class | victim | knockoff |", "|---|---|---|"]
    for row in result["per_class"]:
        v, k = row["victim_accuracy"], row["knockoff_accuracy"]
        lines.append(f"| {row['class']} | {_fmt(v)} | {_fmt(k)} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def save_outputs(result: dict, out_dir: Path, json_path: Path | None = None) -> list[Path]:
    """JSON, Markdown and two PNG plots (per-class bars; confusion of knockoff vs victim)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = json_path or out_dir / "evaluation.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(markdown_table(result) + "\n")

    classes = result["classes"]
    x = np.arange(len(classes))
    victim = [r["victim_accuracy"] or 0 for r in result["per_class"]]
    knock = [r["knockoff_accuracy"] or 0 for r in result["per_class"]]
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.6), 4))
    ax.bar(x - 0.2, victim, 0.4, label=f"victim ({result['victim_accuracy']:.3f})")
    ax.bar(x + 0.2, knock, 0.4, label=f"knockoff ({result['knockoff_accuracy']:.3f})")
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("per-class accuracy")
    ax.set_title(f"{result['dataset']} {result['split']}: recovery {result['recovery']:.3f}, "
                 f"agreement {result['agreement']:.3f}")  # fmt: skip
    ax.legend(loc="lower right")
    fig.tight_layout()
    bars = out_dir / "per_class.png"
    fig.savefig(bars, dpi=120)
    plt.close(fig)

    matrix = np.asarray(result["confusion_victim_vs_knockoff"], dtype=float)
    normalized = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(5, len(classes) * 0.5), max(4, len(classes) * 0.45)))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_yticks(x, classes)
    ax.set_xlabel("knockoff prediction")
    ax.set_ylabel("victim prediction")
    ax.set_title("knockoff vs victim (row-normalised)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    confusion = out_dir / "confusion.png"
    fig.savefig(confusion, dpi=120)
    plt.close(fig)
    return [json_path, out_dir / "evaluation.md", bars, confusion]


def plot_budget_curve(points: list[dict], path: Path) -> Path:
    """Knockoff accuracy and agreement against the number of queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [p["budget"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(budgets, [p["knockoff_accuracy"] for p in points], "o-", label="knockoff accuracy")
    ax.plot(budgets, [p["agreement"] for p in points], "s--", label="agreement with victim")
    ax.axhline(points[0]["victim_accuracy"], color="grey", lw=1, label="victim accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("queries (budget)")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
