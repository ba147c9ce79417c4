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


@app.command()
@friendly
def query(
    url: str = typer.Option(..., help="Base URL of the prediction API, e.g. http://127.0.0.1:8000"),
    pool: str = typer.Option(
        "natural", help="Query pool: any dataset name (natural, noise, imagefolder:<path>, ...)"
    ),
    budget: int = typer.Option(..., help="Number of images to query (not requests)"),
    strategy: str = typer.Option("random", help="random or adaptive"),
    db: Path = typer.Option(Path("runs/transfer.sqlite"), help="Transfer-set SQLite file"),
    api_key: str | None = typer.Option(None, envvar="ATTACKER_API_KEY", help="X-API-Key"),
    concurrency: int = typer.Option(16, help="Requests in flight at most"),
    batch_size: int = typer.Option(8, help="Images per request"),
    seed: int = typer.Option(0, help="Seeds the pool and the strategy"),
    pool_size: int | None = typer.Option(None, help="Images in a generated pool"),
    pool_image_size: int | None = typer.Option(None, help="Side of a generated pool's images"),
    native_size: bool = typer.Option(
        False, help="Send images at the pool's size instead of the API's input size"
    ),
    limit: int | None = typer.Option(None, help="Stop after this many new images (resumable)"),
    retries: int = typer.Option(10, help="Retries per request on errors and 5xx"),
    timeout: float = typer.Option(30.0, help="Seconds per request"),
) -> None:
    """Query the API with pool images and store every answer; rerun the same command to resume."""
    from attacker.client import RetryPolicy
    from attacker.query import QueryConfig, run_query, run_summary

    config = QueryConfig(
        url=url, pool=pool, budget=budget, db=db, strategy=strategy, seed=seed,
        api_key=api_key, concurrency=concurrency, batch_size=batch_size, pool_size=pool_size,
        pool_image_size=pool_image_size, resize_to_input=not native_size, limit=limit,
        timeout_s=timeout, retry=RetryPolicy(max_retries=retries),
    )  # fmt: skip
    typer.echo(run_summary(run_query(config)))


@app.command()
@friendly
def export(
    db: Path = typer.Option(Path("runs/transfer.sqlite"), help="Transfer-set SQLite file"),
    run: int | None = typer.Option(None, help="Run id (default: the latest)"),
    out: Path = typer.Option(Path("runs/export"), help="Folder to write"),
) -> None:
    """Write a run as an ImageFolder-like tree of the images sent plus answers.json."""
    from attacker.export import export_run

    result = export_run(db, out, run)
    typer.echo(f"run {result.run_id}: {result.images} images -> {result.answers_json.parent}")


@app.callback()
def main() -> None:
    """The attacker's commands."""


if __name__ == "__main__":
    app()
