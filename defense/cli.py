"""`defense`: train and evaluate the OOD filter and the other defenses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shared.cli import DEVICE_HELP, friendly
from shared.errors import TestbedError
from shared.transforms import DEFAULT_ATTACK_TRANSFORMS

app = typer.Typer(
    help="The victim owner's defenses against model extraction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """The defender's commands."""


def _write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        typer.echo(f"wrote {path}")


@app.command("train-ood")
@friendly
def train_ood_command(
    in_dataset: Annotated[str, typer.Option(help="the victim's data, e.g. cifar10-jpeg")],
    out_dataset: Annotated[str, typer.Option(help="other natural images")],
    backbone: Annotated[
        str,
        typer.Option(
            help="victim:<checkpoint> | torchvision:<arch>[:<weights file>] | scratch:<arch> "
            "| defender:<arch>"
        ),
    ],
    out: Annotated[Path, typer.Option(help="where to write the filter artefact")] = Path(
        "runs/ood.pt"
    ),
    target_tnr: Annotated[
        float,
        typer.Option(min=0.5, max=1.0, help="share of benign held-out images the threshold passes"),
    ] = 0.95,
    image_size: Annotated[
        int | None, typer.Option(help="side the service feeds the filter (default: victim's, 32)")
    ] = None,
    holdout: Annotated[
        float, typer.Option(min=0.01, max=0.9, help="held-out fraction for the threshold")
    ] = 0.1,
    folds: Annotated[int, typer.Option(min=2, help="cross-validation folds for C")] = 10,
    in_size: Annotated[int | None, typer.Option(help="images of a generated in-pool")] = None,
    out_size: Annotated[int | None, typer.Option(help="images of a generated out-pool")] = None,
    scratch_epochs: Annotated[int, typer.Option(help="epochs of a scratch: backbone")] = 6,
    pretrain_epochs: Annotated[int, typer.Option(help="epochs of a defender: backbone")] = 4,
    encodings: Annotated[
        bool, typer.Option(help="randomly re-encode every image (JPEG 30-95, resize chains)")
    ] = True,
    variants: Annotated[int, typer.Option(min=1, help="encoded copies per training image")] = 1,
    match_in: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="share of out images first given the in-data's own pipeline"
        ),
    ] = 0.0,
    backbone_size: Annotated[
        int | None, typer.Option(help="side a trained backbone sees (a low-pass; default: all)")
    ] = None,
    pretrain_limit: Annotated[
        int, typer.Option(help="images per side a trained backbone sees (0 = all)")
    ] = 0,
    fit_limit: Annotated[
        int, typer.Option(help="images per side the regression sees (0 = all)")
    ] = 0,
    torchvision_size: Annotated[int, typer.Option(help="input side of a torchvision net")] = 224,
    seed: Annotated[int, typer.Option(help="seeds the samples, the splits and the training")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Train Atli et al.'s OOD filter (frozen features + CV'd logistic regression + threshold)."""
    from defense.ood import train_ood
    from shared.device import resolve_device

    report = train_ood(
        in_dataset, out_dataset, backbone, out, target_tnr=target_tnr, image_size=image_size,
        holdout=holdout, folds=folds, in_size=in_size, out_size=out_size,
        scratch_epochs=scratch_epochs, pretrain_epochs=pretrain_epochs, encodings=encodings,
        variants=variants, match_in=match_in, backbone_size=backbone_size,
        pretrain_limit=pretrain_limit or None, fit_limit=fit_limit or None,
        torchvision_size=torchvision_size, seed=seed,
        device=resolve_device(device),
    )  # fmt: skip
    meta = report.filter.meta
    typer.echo(
        f"OOD filter ({backbone}, C={meta['logistic']['C']:.4g}): held-out TNR "
        f"{report.heldout_tnr:.4f}, TPR {report.heldout_tpr:.4f} at threshold "
        f"{report.filter.threshold:.4f} ({report.seconds:.0f} s) -> {report.path}"
    )


@app.command("evaluate-ood")
@friendly
def evaluate_ood_command(
    detector: Annotated[Path, typer.Option(help="the filter artefact")] = Path("runs/ood.pt"),
    victim: Annotated[Path, typer.Option(help="the victim checkpoint")] = Path("runs/victim.pt"),
    in_dataset: Annotated[str, typer.Option(help="benign test images: its test split")] = (
        "cifar10-jpeg"
    ),
    attack_pool: Annotated[str, typer.Option(help="the attacker's query pool")] = (
        "tiny-imagenet-attacker"
    ),
    attack_limit: Annotated[int, typer.Option(help="attack images sampled (0 = all)")] = 10_000,
    in_limit: Annotated[int, typer.Option(help="benign test images sampled (0 = all)")] = 0,
    attack_split: Annotated[str, typer.Option(help="the attack pool's split")] = "train",
    attack_transform: Annotated[
        list[str] | None,
        typer.Option(
            help="how the attacker encodes its queries (repeatable): none, png, jpeg:<quality>, "
            "resize:<px>, blur:<sigma>, match-in (default: all of "
            + ", ".join(DEFAULT_ATTACK_TRANSFORMS)
            + ")"
        ),
    ] = None,
    baselines: Annotated[bool, typer.Option(help="also score MSP, ODIN, ... on the victim")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    markdown: Annotated[Path | None, typer.Option(help="write the tables here")] = None,
    seed: Annotated[int, typer.Option(help="seeds the samples")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """TPR/TNR/AUROC/FPR@95TPR of the filter per attacker transform and in the worst case,
    beside max softmax, ODIN, Mahalanobis, energy and kNN."""
    from defense.ood_eval import evaluate_ood, ood_markdown
    from shared.device import resolve_device
    from shared.transforms import parse_transform

    transforms = list(attack_transform or DEFAULT_ATTACK_TRANSFORMS)
    for spec in transforms:  # a bad spec fails before any data or model is read
        parse_transform(spec)
    result = evaluate_ood(
        detector, victim, in_dataset, attack_pool, transforms=transforms,
        attack_limit=attack_limit or None, in_limit=in_limit or None,
        attack_split=attack_split, baselines=baselines, seed=seed,
        device=resolve_device(device),
    )  # fmt: skip
    table = ood_markdown(result)
    typer.echo(table)
    _write_json(json_out, result)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(table + "\n")


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """`name.field=value` items -> {defense: {field: value}} (validated by the registry)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, field_name = key.strip().partition(".")
        if not sep or not dot or not name or not field_name:
            raise TestbedError(
                f"--set {item!r}: expected DEFENSE.FIELD=VALUE, e.g. prada.threshold=0.95"
            )
        out.setdefault(name, {})[field_name] = value.strip()
    return out


@app.command("evaluate-utility")
@friendly
def evaluate_utility_command(
    victim: Annotated[Path, typer.Option(help="the victim checkpoint")] = Path("runs/victim.pt"),
    dataset: Annotated[
        str | None,
        typer.Option(help="its test split is the benign traffic (default: the victim's own)"),
    ] = None,
    ood: Annotated[Path | None, typer.Option(help="an OOD filter artefact to include")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="test images used (default all)")] = None,
    clients: Annotated[
        int, typer.Option(min=1, help="benign clients sending the batches in turn")
    ] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 128,
    rs_beta: Annotated[float | None, typer.Option(help="= --set reverse_sigmoid.beta=")] = None,
    rs_gamma: Annotated[float | None, typer.Option(help="= --set reverse_sigmoid.gamma=")] = None,
    noise_std: Annotated[float | None, typer.Option(help="= --set noise.std=")] = None,
    prada_threshold: Annotated[float | None, typer.Option(help="= --set prada.threshold=")] = None,
    round_decimals: Annotated[int, typer.Option(help="decimals of the rounding row")] = 2,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="DEFENSE.FIELD=VALUE replaces a default (repeatable)"),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    seed: Annotated[
        int, typer.Option(help="seeds the sample, its order and the defenses' randomness")
    ] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
) -> None:
    """Benign accuracy through the defended black box (the service's steps), per defense.

    Every registered defense is measured at its own default strength unless overridden.
    """
    from defense.evaluate import default_configs, evaluate_utility, utility_markdown

    overrides = parse_sets(set_ or [])
    shortcuts = {("reverse_sigmoid", "beta"): rs_beta, ("reverse_sigmoid", "gamma"): rs_gamma,
                 ("noise", "std"): noise_std, ("prada", "threshold"): prada_threshold}  # fmt: skip
    for (name, field_name), value in shortcuts.items():
        if value is not None:
            overrides.setdefault(name, {})[field_name] = value
    configs = default_configs(ood, overrides, round_decimals)
    result = evaluate_utility(
        victim, dataset, configs, limit=limit, clients=clients, batch_size=batch_size,
        seed=seed, device=device,
    )  # fmt: skip
    typer.echo(utility_markdown(result))
    _write_json(json_out, result)


if __name__ == "__main__":
    app()
