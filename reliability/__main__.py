"""`python -m reliability` (`make reliability`): every check at full scale, one line each.

Exits 1 if any check fails. Writes `runs/reliability/report.json` (figures and failures).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.common import throwaway_victim
from reliability.common import CheckResult, write_report

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _checks(victim: Path, work: Path, quick: bool) -> dict[str, Callable[[], CheckResult]]:
    from reliability import access, clients, faults, fuzz, load
    from reliability.common import service_process

    def schemathesis_check() -> CheckResult:
        with service_process({"VICTIM_CHECKPOINT": str(victim), "VICTIM_DEVICE": "cpu"}) as (u, _):
            open_api = fuzz.check_schemathesis(u, examples=20 if quick else 100)
        env = {"VICTIM_CHECKPOINT": str(victim), "VICTIM_DEVICE": "cpu",
               "VICTIM_API_KEYS": "reliability-key-1"}  # fmt: skip
        with service_process(env) as (u, _):
            keyed = fuzz.check_schemathesis(u, examples=10 if quick else 30,
                                            api_key="reliability-key-1")  # fmt: skip
        open_api.failures += [f"with keys: {f}" for f in keyed.failures]
        open_api.figures["cases"] += keyed.figures["cases"]
        return open_api

    def hostile() -> CheckResult:
        log = work / "hostile-images-service.log"
        env = {"VICTIM_CHECKPOINT": str(victim), "VICTIM_DEVICE": "cpu"}
        with service_process(env, log_file=log) as (u, _):
            return fuzz.check_hostile_images(u, victim, cases=300 if quick else 5000, log=log)

    return {
        "schemathesis": schemathesis_check,
        "hostile-images": hostile,
        "load": lambda: load.check_load(victim, work, seconds=10 if quick else 60),
        # quick: smaller bounds, so that its 1,000 warm-up clients pass them too
        "many-clients": lambda: (
            clients.check_many_clients(victim, 5_000, max_buckets=500, prada_clients=250)
            if quick
            else clients.check_many_clients(victim, 100_000)
        ),
        "service-restart": lambda: faults.check_service_restart(victim, work),
        "sigterm": lambda: faults.check_graceful_shutdown(victim),
        "attacker-sigkill": lambda: faults.check_attacker_kills(victim, work),
        "disk-full/ro": lambda: faults.check_storage_faults(victim, work),
        "access": lambda: access.check_access(victim, work),
    }


@app.command()
def main(
    only: Annotated[str | None, typer.Option(help="comma-separated check names")] = None,
    quick: Annotated[bool, typer.Option(help="small scale (minutes), for trying it out")] = False,
    report: Path = Path("runs/reliability/report.json"),
) -> None:
    """Run the reliability and security checks; exit 1 if any fails."""
    results: list[CheckResult] = []
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        work = Path(tmp)
        victim = throwaway_victim(work / "victim.pt", arch="cnn5")
        checks = _checks(victim, work, quick)
        chosen = only.split(",") if only else list(checks)
        unknown = [c for c in chosen if c not in checks]
        if unknown:
            typer.echo(f"error: unknown check {unknown}; known: {', '.join(checks)}", err=True)
            raise typer.Exit(2)
        for name in chosen:
            started = time.monotonic()
            try:
                result = checks[name]()
            except Exception as exc:  # noqa: BLE001 - a check that crashed has failed
                result = CheckResult(name)
                result.fail(f"the check crashed: {type(exc).__name__}: {exc}")
            result.seconds = time.monotonic() - started
            results.append(result)
            typer.echo(result.line())
            sys.stdout.flush()
            write_report(report, results)
    failed = [r.name for r in results if not r.ok]
    typer.echo(f"reliability: {len(results) - len(failed)} passed, {len(failed)} failed")
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    app()
