"""`victim-service`: train a victim, serve it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from shared.cli import DEVICE_HELP, friendly

app = typer.Typer(
    help="The victim owner's side: train a model and serve it behind an API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
@friendly
def train(
    dataset: Annotated[
        str, typer.Option(help="registry name, e.g. digits, cifar10-jpeg")
    ] = "digits",
    arch: Annotated[
        str | None, typer.Option(help="architecture, e.g. cnn5, cnn9, resnet18 (default: recipe)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="default: the dataset's recipe")] = None,
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("runs/victim.pt"),
    batch_size: Annotated[int | None, typer.Option(help="default: the recipe's")] = None,
    lr: Annotated[float | None, typer.Option(help="default: the recipe's")] = None,
    input_size: Annotated[int | None, typer.Option(help="default: the recipe's")] = None,
    weights: Annotated[str | None, typer.Option(help="'imagenet' or a local weights file")] = None,
    seed: Annotated[int, typer.Option(help="seeds the split, the weights and the batches")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    amp: Annotated[bool, typer.Option(help="bf16 autocast where supported")] = True,
    flip: Annotated[
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Mirror training images; default: unless the dataset declares its labels "
            "not flip-invariant (digits, text, signs; an ImageFolder tree's .no-flip file)",
        ),
    ] = None,
) -> None:
    """Train a victim (seeded, best epoch chosen on a validation split) and write its checkpoint.

    Unset options come from the dataset's recipe (victim_service/recipes.py): digits cnn5
    15 epochs, batch 64, lr 0.05; cifar10-jpeg cnn9 18 epochs, batch 256, lr 0.2.
    """
    from victim_service.recipes import recipe_for
    from victim_service.train import train_victim

    arch = arch or recipe_for(dataset).arch

    result = train_victim(
        dataset, arch, out, epochs=epochs, batch_size=batch_size, lr=lr, input_size=input_size,
        weights=weights, seed=seed, device=device, amp=amp, flip=flip, say=typer.echo,
    )  # fmt: skip
    typer.echo(
        f"victim {arch} on {dataset}: test accuracy {result.test_accuracy:.4f} "
        f"(validation {result.val_accuracy:.4f}, {result.seconds:.0f} s) -> {result.checkpoint}"
    )


@app.command()
@friendly
def serve(
    checkpoint: Annotated[Path, typer.Option(help="victim checkpoint")] = Path("runs/victim.pt"),
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on")] = 8000,
    output: Annotated[str | None, typer.Option(help="probs | topk | label")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="classes a topk answer holds (= VICTIM_TOP_K)")
    ] = None,
    round_decimals: Annotated[
        int | None,
        typer.Option(help="decimals the answers are rounded to (= VICTIM_ROUND_DECIMALS)"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="= VICTIM_DEVICE")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's: debug, info, warning, ...")] = "info",
) -> None:
    """Serve the checkpoint; every other setting comes from VICTIM_* environment variables."""
    import uvicorn

    from shared.errors import TestbedError
    from victim_service.app import create_app, load_service

    if not checkpoint.exists():
        raise TestbedError(
            f"checkpoint {checkpoint} does not exist; train one with `victim-service train`"
        )
    overrides = {"checkpoint": checkpoint, "output": output, "top_k": top_k,
                 "round_decimals": round_decimals, "device": device}  # fmt: skip
    # a bad value, a refused checkpoint or OOD file: one line, exit 2
    settings, blackbox = load_service(**{k: v for k, v in overrides.items() if v is not None})
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    uvicorn.run(create_app(settings, blackbox), host=host, port=port, log_level=log_level)


if __name__ == "__main__":
    app()
