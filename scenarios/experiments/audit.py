"""An extraction-risk audit an API owner runs against their own live endpoint.

A KnockoffNets attacker (random natural images from the owner's choice of pool) queries the
endpoint up to the largest budget; a fresh knockoff is trained on each prefix of the answers
(each budget); each knockoff is scored on the owner's labelled test data against the truth and
against the endpoint's own answers (read once through the API). The report says in plain words
how many queries and how many seconds (querying up to that budget, plus training that
knockoff) it took to copy the model to `target` (90%) of its accuracy, or that the budget did
not suffice. The endpoint is only ever used through HTTP, with the owner's API key.
"""

from __future__ import annotations

import asyncio
import base64
import html
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from attacker.attacks import Target, make_attack
from attacker.client import PredictClient, labels_via_api
from attacker.defaults import KNOCKOFF
from attacker.evaluate import evaluate, plot_budget_curve
from attacker.store import Query, Run, open_store
from attacker.train import check_keep, train_knockoff
from attacker.transfer import load_transfer_set
from scenarios.demo import DEMO_KNOCKOFF_EPOCHS
from scenarios.experiments.report import read_results, write_results
from shared.datasets import check_dataset, load_dataset
from shared.errors import TestbedError
from shared.models import check_arch

Say = Callable[[str], object]


@dataclass(frozen=True)
class AuditConfig:
    url: str
    test_data: str
    api_key: str | None = None
    pool: str = "tiny-imagenet-attacker"
    pool_size: int | None = None
    budgets: tuple[int, ...] = (500, 1_000, 2_000, 5_000, 10_000)
    target: float = 0.9
    """The share of the model's accuracy that counts as copied."""
    knockoff_arch: str = KNOCKOFF.arch
    knockoff_epochs: int = DEMO_KNOCKOFF_EPOCHS
    knockoff_batch_size: int = KNOCKOFF.batch_size
    knockoff_lr: float = KNOCKOFF.lr
    knockoff_min_steps: int = 1_000
    """Small budgets get at least this many training steps: a knockoff stopped before it
    converges would overstate the queries a copy needs, and so understate the owner's risk."""
    knockoff_keep: str = KNOCKOFF.keep
    """The knockoff's kept weights (`KnockoffOptions.keep`): `best` on its held-out answers, or
    `last`. With few held-out answers and short training the best epoch can be noise (the
    audit test's 60 answers and 150 steps kept epoch 9 of 30, agreeing 0.21, the last 0.55)."""
    concurrency: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.budgets or any(b < 10 for b in self.budgets):
            raise TestbedError("audit: give budgets of at least 10 queries each")
        if not 0 < self.target <= 1:
            raise TestbedError(f"audit: the target must be in (0, 1], got {self.target}")
        check_keep(self.knockoff_keep, "audit: --knockoff-keep")
        # names before the first query: an unknown architecture surfaced after them all
        check_dataset(self.test_data)
        check_dataset(self.pool)
        check_arch(self.knockoff_arch)


def _model_size(url: str, api_key: str | None) -> int:
    async def info() -> int:
        async with PredictClient(url, api_key=api_key) as client:
            return (await client.model_info()).input_size

    return asyncio.run(info())


def seconds_to(db: Path, run_id: int, budget: int) -> float:
    """Seconds from the run's start until its first `budget` answers were committed."""
    with open_store(db)() as session:
        started = session.scalar(select(Run.started_at).where(Run.id == run_id))
        last = session.scalar(
            select(func.max(Query.created_at)).where(
                Query.run_id == run_id, Query.position < budget
            )
        )
    if started is None or last is None:
        return float("nan")
    return max(0.0, (last - started).total_seconds())


def run_audit(config: AuditConfig, out: Path, say: Say = print) -> dict:
    """The whole audit; writes out/results.json, then report.md, report.html, budget.png."""
    start = time.perf_counter()
    budgets = sorted(set(config.budgets))
    out.mkdir(parents=True, exist_ok=True)
    size = _model_size(config.url, config.api_key)
    test = load_dataset(config.test_data, "test", image_size=size, seed=config.seed)
    images, truth = test.arrays(size), np.asarray(test.targets)
    say(f"audit: reading the endpoint's answers on {len(images)} test images of {config.test_data}")
    victim_labels = np.asarray(labels_via_api(config.url, images, api_key=config.api_key))
    victim_accuracy = float((victim_labels == truth).mean())
    attack = make_attack("knockoff", {
        "budget": budgets[-1], "pool": config.pool, "pool_size": config.pool_size,
        "seed": config.seed, "arch": config.knockoff_arch, "epochs": config.knockoff_epochs,
        "batch_size": config.knockoff_batch_size, "lr": config.knockoff_lr,
    })  # fmt: skip
    db = out / "transfer.sqlite"
    say(f"audit: {budgets[-1]} KnockoffNets queries from {config.pool} to {config.url}")
    query = attack.query(
        Target(url=config.url, db=db, api_key=config.api_key, concurrency=config.concurrency,
               batch_size=8, progress=False)
    )  # fmt: skip
    if not query.complete:
        raise TestbedError(f"audit: the endpoint answered {query.answered} of {budgets[-1]}")
    rows = []
    for budget in budgets:
        t = time.perf_counter()
        transfer = load_transfer_set(db, query.run_id, budget)
        knockoff = out / "knockoffs" / f"knockoff-{budget}.pt"
        options = replace(
            attack.knockoff_options(progress=False),
            min_steps=config.knockoff_min_steps, keep=config.knockoff_keep,
        )  # fmt: skip
        train_knockoff(transfer, options, knockoff)
        train_seconds = time.perf_counter() - t
        e = evaluate(knockoff, config.url, config.test_data, "test", victim_labels=victim_labels)
        query_seconds = seconds_to(db, query.run_id, budget)
        rows.append({
            "budget": budget, "knockoff_accuracy": e["knockoff_accuracy"],
            "victim_accuracy": victim_accuracy,
            "recovery": e["knockoff_accuracy"] / victim_accuracy if victim_accuracy else 0.0,
            "agreement": e["agreement"], "query_seconds": query_seconds,
            "train_seconds": train_seconds, "seconds": query_seconds + train_seconds,
        })  # fmt: skip
        say(f"  {budget} queries: knockoff accuracy {e['knockoff_accuracy']:.3f} "
            f"(recovery {rows[-1]['recovery']:.3f}), agreement {e['agreement']:.3f}")  # fmt: skip
    reached = next((r for r in rows if r["recovery"] >= config.target), None)
    results = {
        "experiment": "audit",
        "description": (__doc__ or "").strip().splitlines()[0],
        "config": {**asdict(config), "api_key": "***" if config.api_key else None},
        "test_images": int(len(images)),
        "victim_accuracy": victim_accuracy,
        "queries_per_second": query.images_per_s,
        "rows": rows,
        "reached": reached,
        "seed": config.seed,
        "seconds": time.perf_counter() - start,
    }
    render(write_results(results, out))
    return results


# ------------------------------------------------------------------------------ report


def verdict(results: dict) -> str:
    """The report's answer, in plain words."""
    target = results["config"]["target"]
    reached, rows = results["reached"], results["rows"]
    if reached is not None:
        return (
            f"An attacker copied your model to {target:.0%} of its accuracy with "
            f"{reached['budget']:,} queries and {reached['seconds']:,.0f} seconds "
            f"({reached['query_seconds']:,.0f} s querying your API, "
            f"{reached['train_seconds']:,.0f} s training the copy on this machine): the copy "
            f"scores {reached['knockoff_accuracy']:.1%} on your test data against your model's "
            f"{results['victim_accuracy']:.1%}, and agrees with your API on "
            f"{reached['agreement']:.1%} of it."
        )
    best = max(rows, key=lambda r: r["recovery"])
    return (
        f"Within {rows[-1]['budget']:,} queries the copy did not reach {target:.0%} of your "
        f"model's accuracy: the best copy ({best['budget']:,} queries, "
        f"{best['seconds']:,.0f} s) scores {best['knockoff_accuracy']:.1%} against your "
        f"model's {results['victim_accuracy']:.1%} ({best['recovery']:.0%} of it) and agrees "
        f"with your API on {best['agreement']:.1%} of your test data. A larger budget or a "
        "better pool may still get there."
    )


def _table(results: dict) -> list[str]:
    lines = ["| queries | copy's accuracy | share of yours | agreement | seconds (query + train) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in results["rows"]:
        lines.append(
            f"| {r['budget']:,} | {r['knockoff_accuracy']:.3f} | {r['recovery']:.3f} | "
            f"{r['agreement']:.3f} | {r['seconds']:,.0f} ({r['query_seconds']:,.0f} + "
            f"{r['train_seconds']:,.0f}) |"
        )
    return lines


_KEPT = {"best": "epoch best on its held-out answers", "last": "last epoch"}


def markdown(results: dict) -> str:
    c = results["config"]
    return "\n".join([
        "# Model-extraction audit",
        "",
        f"Endpoint `{c['url']}`; test data `{c['test_data']}` ({results['test_images']} "
        f"images); attacker: KnockoffNets, random images from `{c['pool']}`, knockoff "
        f"`{c['knockoff_arch']}` ({c['knockoff_epochs']} epochs, at least "
        f"{c.get('knockoff_min_steps', 0):,} steps, keeping the "
        f"{_KEPT[c.get('knockoff_keep', 'best')]}); seed {results['seed']}.",
        "",
        f"**{verdict(results)}**",
        "",
        *_table(results),
        "",
        "![budget curve](budget.png)",
        "",
        "Seconds of querying are those of this audit's own client against your endpoint "
        f"({results['queries_per_second']:.0f} queries/s); a patient attacker spreads them out, "
        "a better-equipped one trains faster.",
    ]) + "\n"  # fmt: skip


def html_report(results: dict, png: Path) -> str:
    """One self-contained page: the plot is embedded as base64."""
    image = base64.b64encode(png.read_bytes()).decode()
    md_rows = _table(results)
    head = [cell.strip() for cell in md_rows[0].strip("|").split("|")]
    body = [[cell.strip() for cell in row.strip("|").split("|")] for row in md_rows[2:]]
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    for row in body:
        table += "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
    table += "</table>"
    c = results["config"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Model-extraction audit</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.2em .6em;text-align:right}}
.verdict{{font-size:1.15em;font-weight:bold}}</style></head><body>
<h1>Model-extraction audit</h1>
<p>Endpoint <code>{html.escape(c["url"])}</code>; test data <code>{html.escape(c["test_data"])}
</code> ({results["test_images"]} images); attacker: KnockoffNets, random images from
<code>{html.escape(c["pool"])}</code>.</p>
<p class="verdict">{html.escape(verdict(results))}</p>
{table}
<p><img alt="budget curve" src="data:image/png;base64,{image}"></p>
</body></html>
"""


def render(results_json: Path) -> tuple[Path, Path, Path]:
    """report.md, report.html and budget.png from results.json alone."""
    results = read_results(results_json, "audit")
    folder = results_json.parent
    points = [{**r, "victim_accuracy": results["victim_accuracy"]} for r in results["rows"]]
    png = plot_budget_curve(points, folder / "budget.png")
    (folder / "report.md").write_text(markdown(results))
    (folder / "report.html").write_text(html_report(results, png))
    return folder / "report.md", folder / "report.html", png
