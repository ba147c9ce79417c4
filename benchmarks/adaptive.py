"""Adaptive vs random on the embedded demo's setting, in process: what each strategy puts in
the transfer set (and, with --train, the knockoff's recovery), over several seeds.

The victim answers through the same pipeline as the service (`Blackbox`, probabilities); each
strategy learns `window` batches late, as the query loop with concurrency 16 does. Diagnostics
per run: how evenly the pool's classes are sampled (normalized entropy), how evenly the
victim's labels fall, and the mean top-2 margin. With --train: the demo's knockoff (cnn5,
15 epochs) on the answers and its recovery on the digits test split.

    python -m benchmarks.adaptive --victim V.pt --seeds 0,1,2 [--train] [--json out.json]
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from attacker.strategies import AdaptiveConfig, make_strategy
from benchmarks.common import write_json
from shared.checkpoint import load_checkpoint
from shared.cli import friendly
from shared.datasets import load_dataset
from shared.pipeline import Blackbox

VARIANTS = {
    "random": None,
    "adaptive": AdaptiveConfig(),
}


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(counts))) if len(counts) > 1 else 1.0


def collect(box: Blackbox, pool, budget: int, seed: int, config, batch=8, window=16):
    """Drive a strategy like the query loop; the images and answers in plan order."""
    name = "random" if config is None else "adaptive"
    strategy = make_strategy(
        name, targets=pool.targets, budget=budget, num_outputs=box.model.num_classes, seed=seed,
        class_groups=pool.class_groups, num_classes=len(pool.classes), adaptive=config,
    )  # fmt: skip
    done, chosen, answers = [], [], []
    for k, start in enumerate(range(0, budget, batch)):
        if strategy.needs_feedback and k - window - 1 >= 0:
            s, idx, imgs, ans = done[k - window - 1]
            strategy.observe(s, idx, imgs, ans)
        idx = strategy.select(start, min(batch, budget - start))
        images = pool.arrays(box.input_size, idx)
        ans = box(images)
        done.append((start, idx, images, ans))
        chosen += idx
        answers += ans
    return np.asarray(chosen), answers


def main(
    victim: Annotated[Path, typer.Option()],
    seeds: str = "0,1,2",
    budget: int = 2000,
    pool_size: int = 10_000,
    train: bool = False,
    epochs: int = 15,
    lr: Annotated[str, typer.Option(help="Comma-separated adaptive step sizes to add")] = "",
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
) -> None:
    model, card = load_checkpoint(victim)
    box = Blackbox(model, card.input_size, amp=False)
    variants = dict(VARIANTS)
    for value in filter(None, lr.split(",")):
        variants[f"adaptive-lr{value}"] = replace(AdaptiveConfig(), lr=float(value))
    rows = []
    for seed in [int(s) for s in seeds.split(",")]:
        pool = load_dataset("natural", size=pool_size, image_size=64, seed=seed)
        for name, config in variants.items():
            start = time.perf_counter()
            chosen, answers = collect(box, pool, budget, seed, config)
            classes = np.bincount(pool.targets[chosen], minlength=len(pool.classes))
            labels = np.bincount([a.label for a in answers], minlength=card.num_classes)
            margins = [np.diff(sorted(a.probabilities)[-2:])[0] for a in answers]
            row = {
                "strategy": name, "seed": seed, "budget": budget,
                "pool_class_entropy": _entropy(classes),
                "victim_label_entropy": _entropy(labels),
                "mean_margin": float(np.mean(margins)),
                "top_pool_class_share": float(classes.max() / classes.sum()),
            }  # fmt: skip
            if train:
                row["recovery"] = _recovery(pool, chosen, answers, card, victim, seed, epochs)
            row["seconds"] = time.perf_counter() - start
            print(row, flush=True)
            rows.append(row)
    write_json(json_out, {"victim": str(victim), "rows": rows})


def _recovery(pool, chosen, answers, card, victim: Path, seed: int, epochs: int) -> float:
    import tempfile

    import torch

    from attacker.evaluate import evaluate
    from attacker.train import KnockoffOptions, train_knockoff
    from attacker.transfer import TransferSet
    from shared.training import to_tensor

    images = pool.arrays(card.input_size, chosen)
    targets = torch.from_numpy(np.stack([np.stack(a.target()) for a in answers]).astype("f4"))
    labels = torch.tensor([a.label for a in answers])
    transfer = TransferSet(to_tensor(images), targets, labels, "probs", card.num_classes,
                           card.input_size, {"id": 0, "pool": "natural"})  # fmt: skip
    options = KnockoffOptions(epochs=epochs, seed=seed, progress=False, device="cpu", amp=False)
    with tempfile.TemporaryDirectory() as tmp:
        _, result = train_knockoff(transfer, options, Path(tmp) / "k.pt")
        return float(
            evaluate(result.checkpoint, victim, "digits", "test", device="cpu")["recovery"]
        )


if __name__ == "__main__":
    typer.run(friendly(main))
