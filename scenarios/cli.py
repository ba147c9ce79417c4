"""`scenarios`: what drives the victim service and the attacker together (demo, experiments)."""

from __future__ import annotations

from pathlib import Path

import typer

from shared.cli import friendly, positive_integers
from shared.errors import TestbedError

app = typer.Typer(
    help="Scenarios that run both sides: a victim behind its live API, and an attacker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
@friendly
def demo(
    preset: str = typer.Option("default", help="default (digits, offline) or realistic (CIFAR-10)"),
    victim_dataset: str | None = typer.Option(None, help="The victim's data (default: preset's)"),
    victim_arch: str | None = typer.Option(
        None, help="The victim's architecture (default: preset's)"
    ),
    pool: str | None = typer.Option(
        None, help="Query pool (natural, noise, tiny-imagenet-attacker)"
    ),
    pool_size: int | None = typer.Option(None, help="Images in a generated pool"),
    budget: int | None = typer.Option(None, help="Queries (images)"),
    output: str | None = typer.Option(None, help="Granularity: probs | topk | label"),
    strategy: str | None = typer.Option(None, help="random | adaptive"),
    knockoff_arch: str | None = typer.Option(None, help="The knockoff's architecture"),
    knockoff_epochs: int | None = typer.Option(None, help="The knockoff's training epochs"),
    knockoff_keep: str | None = typer.Option(
        None, help="The knockoff's weights kept: 'best' on its held-out answers, or 'last'"
    ),
    balance: bool | None = typer.Option(
        None, "--balance/--no-balance", help="Copycat's class balancing (default: preset's)"
    ),
    seed: int | None = typer.Option(None, help="Seeds every step (default: preset's)"),
    out: Path | None = typer.Option(None, help="Report folder"),
) -> None:
    """The whole attack on a live local API, offline; writes <out>/report.json."""
    from scenarios.demo import preset as make_preset
    from scenarios.demo import run_demo

    config = make_preset(
        preset, victim_dataset=victim_dataset, victim_arch=victim_arch, pool=pool,
        pool_size=pool_size, budget=budget, output=output, strategy=strategy,
        knockoff_arch=knockoff_arch, knockoff_epochs=knockoff_epochs,
        knockoff_keep=knockoff_keep, balance=balance, seed=seed, out=out,
    )  # fmt: skip
    run_demo(config, say=typer.echo)


@app.command()
@friendly
def run(
    name: str = typer.Argument(..., help="Experiment name (see `scenarios experiments`)"),
    quick: bool = typer.Option(False, help="Embedded data and a small budget: minutes on a CPU"),
    scale: str | None = typer.Option(
        None, help="default | quick | papers (ResNet-34 at 64 px: a GPU's work) (default: default)"
    ),
    out: Path | None = typer.Option(None, help="Results folder (default: results/<name>)"),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a configuration field: budgets=1000,5000 knockoff.epochs=10"
    ),
) -> None:
    """Run one experiment: <out>/results.json, then results.md and results.png from it."""
    from scenarios.experiments.overrides import apply_overrides, check_config
    from scenarios.experiments.registry import default_out, get

    if quick and scale not in (None, "quick"):
        raise TestbedError(f"--quick and --scale {scale} disagree; give one of them")
    scale = "quick" if quick else (scale or "default")
    experiment = get(name)
    folder = out or default_out(name if scale != "papers" else f"{name}-papers")
    config = experiment.config_at(scale)
    config = apply_overrides(config, set_, experiment.set_elsewhere) if set_ else config
    check_config(config)
    folder.mkdir(parents=True, exist_ok=True)  # a folder it cannot write fails now, not after
    try:
        results = experiment.run(folder, quick=scale == "quick", say=typer.echo, config=config)
    except KeyboardInterrupt:  # Ctrl+C: every finished step is cached by its configuration
        from scenarios.experiments.cache import cache_root

        message = (
            "interrupted: the steps that finished (victims, transfer sets, knockoffs) are "
            f"cached in {cache_root()}; rerun the same command to go on from them (the step "
            "that was cut starts again)"
        )
        typer.secho(message, fg=typer.colors.YELLOW, err=True)
        raise SystemExit(130) from None
    typer.echo(f"{name}: {len(results['rows'])} rows in {results['seconds']:.0f} s -> {folder}")


@app.command()
@friendly
def render(
    name: str = typer.Argument(..., help="Experiment name"),
    out: Path | None = typer.Option(None, help="Results folder (default: results/<name>)"),
) -> None:
    """Regenerate results.md and results.png from results.json alone (no experiment runs)."""
    from scenarios.experiments.registry import default_out, get

    experiment = get(name)  # an unknown name is refused as such, with the known ones
    for path in experiment.render((out or default_out(name)) / "results.json"):
        typer.echo(str(path))


@app.command()
@friendly
def merge(
    name: str = typer.Argument(..., help="Experiment name"),
    parts: list[Path] = typer.Argument(..., help="Results folders of runs on other budgets/seeds"),
    out: Path = typer.Option(..., help="Results folder for the merged results"),
) -> None:
    """One results.json (and its table and plot) from runs of one experiment's grid in pieces."""
    from scenarios.experiments.registry import get
    from scenarios.experiments.report import publish, read_results

    experiment = get(name)
    if experiment.merge is None:
        raise TestbedError(f"merge: {name}'s results are not pieces of a grid; nothing to merge")
    pieces = [read_results(part / "results.json", name) for part in parts]
    try:
        results = experiment.merge(pieces)
    except KeyError as exc:  # written by an older version, or edited by hand
        raise TestbedError(f"merge: a piece lacks the key {exc}; rerun it") from None
    publish(results, out, experiment.markdown, experiment.plot)
    typer.echo(f"{name}: {len(results['rows'])} rows from {len(parts)} runs -> {out}")


@app.command()
@friendly
def audit(
    url: str = typer.Option(..., help="Your live endpoint (http://host:port)"),
    test_data: str = typer.Option(
        ..., help="Your labelled test data (dataset name, imagefolder:<path>): its test split"
    ),
    api_key: str | None = typer.Option(None, envvar="AUDIT_API_KEY", help="Your API key"),
    pool: str = typer.Option("tiny-imagenet-attacker", help="The attacker's image pool"),
    pool_size: int | None = typer.Option(None, help="Images in a generated pool"),
    budgets: str = typer.Option("500,1000,2000,5000,10000", help="Comma-separated queries"),
    target: float = typer.Option(0.9, help="Share of your model's accuracy that counts"),
    knockoff_arch: str | None = typer.Option(None, help="The knockoff's architecture"),
    knockoff_epochs: int | None = typer.Option(None, help="The knockoff's training epochs"),
    knockoff_min_steps: int | None = typer.Option(
        None, help="Train each knockoff for at least this many steps (default: 1000)"
    ),
    knockoff_keep: str | None = typer.Option(
        None,
        help="The knockoff's weights kept: 'best' on its held-out answers, or 'last' "
        "(default: best)",
    ),
    seed: int = typer.Option(0, help="Seeds the queries and the knockoffs"),
    out: Path = typer.Option(Path("results/audit"), help="Report folder"),
) -> None:
    """How fast a KnockoffNets attacker copies your live model: report.md and report.html."""
    from dataclasses import replace

    from scenarios.experiments.audit import AuditConfig, run_audit, verdict

    config = AuditConfig(url=url, test_data=test_data, api_key=api_key, pool=pool,
                         pool_size=pool_size, budgets=positive_integers(budgets, "--budgets"),
                         target=target, seed=seed)  # fmt: skip
    given = {"knockoff_arch": knockoff_arch, "knockoff_epochs": knockoff_epochs,
             "knockoff_min_steps": knockoff_min_steps, "knockoff_keep": knockoff_keep}  # fmt: skip
    config = replace(config, **{k: v for k, v in given.items() if v is not None})
    results = run_audit(config, out, say=typer.echo)
    typer.echo(verdict(results))
    typer.echo(f"report: {out / 'report.html'} and {out / 'report.md'}")


@app.command()
def experiments() -> None:
    """List the experiments."""
    from scenarios.experiments.registry import experiment_names, get

    for name in experiment_names():
        typer.echo(f"{name}: {get(name).description}")


@app.callback()
def main() -> None:
    """Scenarios that drive the victim service and the attacker together."""


if __name__ == "__main__":
    app()
