"""results.json -> results.md (a table) and results.png (bars, or lines with a spread band):
data first, so the table and the figure can always be regenerated from the JSON alone.

An experiment's results may say how they are shown: `table` (which list to tabulate, default
"rows"), `columns` (which of its keys), `notes` (lines under the table) and `plot`
({"kind": "bars", "y": ...} or {"kind": "lines", "x", "y", "series", "logx"}: the rows grouped
by series and x, drawn as the mean with a min-max band when several seeds share a point).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.errors import TestbedError

COLUMNS = ("setting", "queries", "knockoff_accuracy", "recovery", "agreement", "seconds")


def header(
    experiment: str, doc: str | None, *, quick: bool, seed: object, config: dict,
    victim_checkpoint: Path | str, victim_accuracy: float,
) -> dict:  # fmt: skip
    """The keys every experiment's results.json begins with, in this order: what ran (its
    module docstring's first line), at which scale and seed, on which victim."""
    return {
        "experiment": experiment,
        "description": (doc or "").strip().splitlines()[0],
        "quick": quick,
        "seed": seed,
        "config": config,
        "victim_checkpoint": str(victim_checkpoint),
        "victim_accuracy": victim_accuracy,
    }


def write_results(results: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(results: dict) -> str:
    columns = results.get("columns", COLUMNS)
    lines = [
        f"# {results['experiment']}{' (quick)' if results.get('quick') else ''}",
        "",
        results.get("description", ""),
        "",
        f"Victim accuracy {results['victim_accuracy']:.4f}; seed {results['seed']}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in results[results.get("table", "rows")]:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    notes = results.get("notes", [])
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def _bars(ax, results: dict, column: str) -> None:
    rows = results["rows"]
    ax.bar([r["setting"] for r in rows], [r[column] for r in rows], color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel(column)
    ax.set_title(f"{results['experiment']}: {column} at {rows[0]['queries']} queries")
    ax.tick_params(axis="x", rotation=30)


def _lines(ax, results: dict, spec: dict) -> None:
    x, y, series = spec["x"], spec["y"], spec["series"]
    for name in dict.fromkeys(r[series] for r in results["rows"]):
        points: dict[float, list[float]] = {}
        for r in results["rows"]:
            if r[series] == name:
                points.setdefault(r[x], []).append(r[y])
        xs = sorted(points)
        values = [np.asarray(points[v], dtype=float) for v in xs]
        line = ax.plot(xs, [v.mean() for v in values], marker="o", label=str(name))[0]
        if any(len(v) > 1 for v in values):
            low, high = [v.min() for v in values], [v.max() for v in values]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    if spec.get("logx"):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{results['experiment']}: {y} against {x}")
    ax.legend()
    ax.grid(alpha=0.3)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a server or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write at the results' resolution, and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def plot(results: dict, path: Path, column: str = "agreement") -> Path:
    """The default figure: the `plot` spec's lines, or bars of `column` per setting."""
    plt = pyplot()
    spec = results.get("plot", {"kind": "bars", "y": column})
    if spec["kind"] == "lines":
        fig, ax = plt.subplots(figsize=(6, 4))
        _lines(ax, results, spec)
    else:
        fig, ax = plt.subplots(figsize=(1.2 * len(results["rows"]) + 2, 3.5))
        _bars(ax, results, spec["y"])
    return save_figure(fig, path)


def read_results(results_json: Path, experiment: str) -> dict:
    """One experiment's results.json, or a one-line TestbedError for a file that is missing,
    torn (not JSON) or another experiment's."""
    if not results_json.is_file():
        raise TestbedError(f"no {results_json}; run the experiment first")
    try:
        results = json.loads(results_json.read_text())
    except ValueError as exc:
        raise TestbedError(f"{results_json} is not valid JSON ({exc})") from None
    found = results.get("experiment") if isinstance(results, dict) else None
    if found != experiment:
        holds = f"the results of {found!r}" if found else "no 'experiment' key"
        raise TestbedError(f"{results_json} holds {holds}, not the results of {experiment!r}")
    return results


def render(
    results_json: Path,
    experiment: str,
    markdown: Callable[[dict], str] = markdown,
    plot: Callable[[dict, Path], Path] = plot,
) -> tuple[Path, Path]:
    """results.md and results.png from results.json alone, by default as one table and one
    figure, or by an experiment's own `markdown(results)` and `plot(results, path)`."""
    results = read_results(results_json, experiment)
    table = results_json.with_name("results.md")
    try:
        text, figure = markdown(results), plot(results, results_json.with_name("results.png"))
    except KeyError as exc:  # written by an older version, or edited by hand
        raise TestbedError(f"{results_json} lacks the key {exc}; rerun the experiment") from None
    table.write_text(text)
    return table, figure


def publish(
    results: dict,
    out: Path,
    markdown: Callable[[dict], str] = markdown,
    plot: Callable[[dict, Path], Path] = plot,
) -> dict:
    """Write out/results.json first, then the table and the figure made from it alone."""
    render(write_results(results, out), results["experiment"], markdown, plot)
    return results
