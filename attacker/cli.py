"""`attacker`: query a live prediction API, train and evaluate a knockoff."""

from __future__ import annotations

from pathlib import Path

import typer

from attacker.defaults import KNOCKOFF
from shared.cli import DEVICE_HELP, friendly, positive_integers
from shared.errors import TestbedError

app = typer.Typer(
    help="The attacker's side: steal a model through its prediction API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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
    retries: int = typer.Option(
        10, help="Retries per request on errors and 5xx (the first contact: at most 2)"
    ),
    timeout: float = typer.Option(30.0, help="Seconds per request"),
    protocol: str = typer.Option(
        "v1",
        help="v1 (this testbed's /v1/predict) or v2 (Open Inference Protocol: Triton, "
        "KServe, MLServer)",
    ),
    model: str = typer.Option("victim", help="v2: the model's name on the server"),
    binary: bool = typer.Option(
        True, "--binary/--json-tensors", help="v2: binary tensor extension or JSON data"
    ),
) -> None:
    """Query the API with pool images and store every answer; rerun the same command to resume."""
    from attacker.client import RetryPolicy
    from attacker.query import QueryConfig, run_query, run_summary

    config = QueryConfig(
        url=url, pool=pool, budget=budget, db=db, strategy=strategy, seed=seed,
        api_key=api_key, concurrency=concurrency, batch_size=batch_size, pool_size=pool_size,
        pool_image_size=pool_image_size, resize_to_input=not native_size, limit=limit,
        timeout_s=timeout, retry=RetryPolicy(max_retries=retries), protocol=protocol,
        model=model, binary=binary,
    )  # fmt: skip
    try:
        result = run_query(config)
    except KeyboardInterrupt:  # Ctrl+C: what is committed stays, and the same command resumes
        from attacker.store import answer_count

        typer.secho(f"interrupted: {answer_count(db)} answers stored in {db}; rerun the same "
                    "command to resume", fg=typer.colors.YELLOW, err=True)  # fmt: skip
        raise SystemExit(130) from None
    typer.echo(run_summary(result))


@app.command()
@friendly
def attack(
    name: str = typer.Argument(..., help="Attack by name: see `attacker attacks`"),
    url: str = typer.Option(..., help="Base URL of the prediction API"),
    param: list[str] = typer.Option(
        [], "--set", help="An attack parameter as key=value (repeatable), e.g. --set budget=2000"
    ),
    db: Path = typer.Option(Path("runs/transfer.sqlite"), help="Transfer-set SQLite file"),
    out: Path = typer.Option(Path("runs/knockoff.pt"), help="Knockoff checkpoint to write"),
    api_key: str | None = typer.Option(None, envvar="ATTACKER_API_KEY", help="X-API-Key"),
    concurrency: int = typer.Option(16, help="Requests in flight at most"),
    batch_size: int = typer.Option(8, help="Images per request"),
    limit: int | None = typer.Option(None, help="Stop after this many new images (resumable)"),
    query_only: bool = typer.Option(False, help="Fill the transfer set, train nothing"),
) -> None:
    """Run an attack by name (knockoff, copycat, jbda): query, resumably, then train a knockoff.

    Rerun the same command to continue an interrupted run."""
    from attacker.attacks import Target, make_attack
    from attacker.runs import run_summary

    pairs = {}
    for item in param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TestbedError(f"--set takes key=value, not {item!r}")
        pairs[key.strip().replace("-", "_")] = value.strip()
    chosen = make_attack(name, pairs)
    target = Target(url=url, db=db, api_key=api_key, concurrency=concurrency,
                    batch_size=batch_size, limit=limit)  # fmt: skip
    if query_only:
        typer.echo(run_summary(chosen.query(target)))
        return
    result = chosen.extract(target, out)
    typer.echo(run_summary(result.query))
    if result.knockoff is not None:
        k = result.knockoff
        typer.echo(f"knockoff: validation agreement {k.val_agreement:.4f} "
                   f"(epoch {k.best_epoch}, {k.seconds:.0f} s) -> {k.checkpoint}")  # fmt: skip


@app.command()
def attacks() -> None:
    """List the attacks by name and their parameters (with defaults)."""
    from attacker.attacks import ATTACKS

    for name in sorted(ATTACKS):
        cls = ATTACKS[name]
        doc = (cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__ or "").strip()
        summary = " ".join(doc.split("\n\n")[0].split())  # the first paragraph, not its line 1
        typer.echo(f"{name}: {summary}")
        for field, info in cls.Params.model_fields.items():
            default = "required" if info.is_required() else repr(info.default)
            typer.echo(f"    {field} = {default}")


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


@app.command()
@friendly
def train(
    db: Path = typer.Option(Path("runs/transfer.sqlite"), help="Transfer-set SQLite file"),
    run: int | None = typer.Option(None, help="Run id (default: the latest)"),
    budget: int | None = typer.Option(None, min=1, help="Train on the first N answers only"),
    budgets: str | None = typer.Option(
        None, help="Comma-separated budgets: one fresh knockoff per prefix, plus a curve"
    ),
    arch: str = typer.Option(KNOCKOFF.arch, help="Knockoff architecture (any of the registry)"),
    epochs: int = typer.Option(KNOCKOFF.epochs, help="Training epochs"),
    batch_size: int = typer.Option(KNOCKOFF.batch_size, help="Answers per step"),
    lr: float = typer.Option(KNOCKOFF.lr, help="Peak learning rate (one-cycle SGD)"),
    out: Path = typer.Option(Path("runs/knockoff.pt"), help="Checkpoint to write"),
    balance: bool = typer.Option(False, help="Copycat's class balancing of the stolen labels"),
    weights: str | None = typer.Option(None, help="'imagenet' or a local weights file"),
    seed: int = typer.Option(0, help="Seeds the split, the weights and the batches"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    keep: str = typer.Option(
        KNOCKOFF.keep, help="The weights kept: 'best' on the held-out answers, or 'last'"
    ),
    victim: Path | None = typer.Option(
        None, help="With --budgets: a victim checkpoint to evaluate each knockoff against"
    ),
    dataset: str | None = typer.Option(
        None, help="With --victim: the labelled test dataset (default: the victim's own)"
    ),
) -> None:
    """Train a knockoff on the answers (soft, top-k or hard labels, whatever the API gave)."""
    from attacker.train import KnockoffOptions, train_budgets

    options = KnockoffOptions(
        arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, weights=weights,
        balance=balance, seed=seed, device=device, keep=keep,
    )  # fmt: skip
    sizes = list(positive_integers(budgets, "--budgets")) if budgets else [budget]
    results = train_budgets(db, sizes, options, out, run)
    points = []
    for r in results:
        typer.echo(f"budget {r.budget}: validation agreement {r.val_agreement:.4f} "
                   f"(epoch {r.best_epoch}, {r.seconds:.0f} s) -> {r.checkpoint}")  # fmt: skip
        if victim is not None:
            from attacker.evaluate import evaluate

            e = evaluate(r.checkpoint, victim, dataset, "test", device=device)
            points.append({"budget": r.budget, **{k: e[k] for k in (
                "victim_accuracy", "knockoff_accuracy", "recovery", "agreement")}})  # fmt: skip
            typer.echo(f"  knockoff accuracy {e['knockoff_accuracy']:.4f}, recovery "
                       f"{e['recovery']:.3f}, agreement {e['agreement']:.3f}")  # fmt: skip
    if len(points) > 1:
        import json

        from attacker.evaluate import plot_budget_curve

        curve = plot_budget_curve(points, out.with_name(f"{out.stem}-budgets.png"))
        out.with_name(f"{out.stem}-budgets.json").write_text(json.dumps(points, indent=2))
        typer.echo(f"curve -> {curve}")


@app.command()
@friendly
def evaluate(
    knockoff: Path = typer.Option(Path("runs/knockoff.pt"), help="Knockoff checkpoint"),
    victim: str = typer.Option("runs/victim.pt", help="Victim checkpoint, or the API's URL"),
    dataset: str | None = typer.Option(
        None, help="Labelled dataset of the victim's task (default: a victim checkpoint's own)"
    ),
    split: str = typer.Option("test", help="The dataset's split scored on"),
    json_out: Path | None = typer.Option(None, "--json", help="Write the figures here"),
    plots: Path = typer.Option(Path("runs/evaluation"), help="Folder for table and PNG plots"),
    api_key: str | None = typer.Option(None, envvar="ATTACKER_API_KEY"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Victim vs knockoff: accuracy, recovery, agreement, macro accuracy, per class; plots."""
    from attacker.evaluate import evaluate as run_evaluation
    from attacker.evaluate import markdown_table, save_outputs

    result = run_evaluation(knockoff, victim, dataset, split, api_key=api_key, device=device)
    save_outputs(result, plots, json_out)
    typer.echo(markdown_table(result))


@app.command(
    hidden=True,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def demo() -> None:
    """Moved: the demo drives both sides, so it lives in `scenarios` (layers run one way)."""
    typer.secho(
        "error: the demo moved: run `scenarios demo` (or `python -m scenarios demo`, `make demo`)",
        fg=typer.colors.RED,
        err=True,
    )
    raise typer.Exit(2)


@app.callback()
def main() -> None:
    """The attacker's commands."""


if __name__ == "__main__":
    app()
