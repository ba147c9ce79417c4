"""results.json -> results.md (a table) and results.png (one bar per row): data first."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("setting", "queries", "knockoff_accuracy", "recovery", "agreement", "seconds")


def write_results(results: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def markdown(results: dict) -> str:
    lines = [
        f"# {results['experiment']}{' (quick)' if results.get('quick') else ''}",
        "",
        results.get("description", ""),
        "",
        f"Victim accuracy {results['victim_accuracy']:.4f}; seed {results['seed']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in results["rows"]:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, column: str = "agreement") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    ax.bar([r["setting"] for r in rows], [r[column] for r in rows], color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel(column)
    ax.set_title(f"{results['experiment']}: {column} at {rows[0]['queries']} queries")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render(results_json: Path, column: str = "agreement") -> tuple[Path, Path]:
    """Regenerate the table and the figure from results.json alone."""
    results = json.loads(results_json.read_text())
    table = results_json.with_name("results.md")
    table.write_text(markdown(results))
    return table, plot(results, results_json.with_name("results.png"), column)
