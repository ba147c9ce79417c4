"""`attacker`: query a live prediction API, train and evaluate a knockoff, run the demo."""

from __future__ import annotations

from pathlib import Path

import typer

from shared.cli import friendly

app = typer.Typer(
    help="The attacker's side: steal a model through its prediction API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
@friendly
def demo(out: Path = Path("runs/demo")) -> None:
    """Train (and cache) the default digits victim and print its test accuracy."""
    from victim_service.train import train_victim

    result = train_victim("digits", "cnn5", out / "victim.pt", epochs=15, batch_size=64, lr=0.05)
    typer.echo(f"victim test accuracy: {result.test_accuracy:.4f}")


@app.callback()
def main() -> None:
    """The attacker's commands."""


if __name__ == "__main__":
    app()
