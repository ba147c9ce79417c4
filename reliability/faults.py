"""Faults (issue 12, part 4), with the attacker driven through its CLI (`attacker query`).

- the service SIGKILLed and restarted mid-attack: the attacker finishes its budget, no row lost
  or stored twice;
- SIGTERM to the service with requests in flight: every one is answered (graceful shutdown,
  timed);
- the attacker SIGKILLed again and again while it writes: `PRAGMA integrity_check` is ok after
  each kill and the rerun completes;
- the disk full (a file-size limit) or the database read-only: a one-line error, exit 2, and
  nothing half-written (the rows already there stay complete; a rerun with room completes).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from reliability.common import CheckResult, sample_png, service_process
from victim_service.launch import ROOT, free_port


def attacker_cmd(url: str, db: Path, budget: int, retries: int = 10) -> list[str]:
    return [sys.executable, "-m", "attacker.cli", "query", "--url", url, "--pool", "noise",
            "--pool-size", str(max(2 * budget, 1000)), "--budget", str(budget), "--db", str(db),
            "--seed", "7", "--concurrency", "4", "--batch-size", "8",
            "--retries", str(retries)]  # fmt: skip


def count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("select count(*) from queries").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0


def audit(db: Path, budget: int) -> dict:
    """Rows, lost and duplicated positions, and `PRAGMA integrity_check`, read-only."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        integrity = conn.execute("pragma integrity_check").fetchone()[0]
        positions = [p for (p,) in conn.execute("select position from queries")]
        indices = {i for (i,) in conn.execute("select pool_index from queries")}
        runs = conn.execute("select count(*) from runs").fetchone()[0]
    return {
        "rows": len(positions),
        "lost": len(set(range(budget)) - set(positions)),
        "duplicated": len(positions) - len(set(positions)) + len(positions) - len(indices),
        "integrity": integrity,
        "runs": runs,
    }


def _wait_rows(db: Path, at_least: int, process: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while count_rows(db) < at_least and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return count_rows(db)


def check_service_restart(checkpoint: Path, workdir: Path, budget: int = 2000) -> CheckResult:
    result = CheckResult("service-restart")
    port = free_port()
    url, db = f"http://127.0.0.1:{port}", workdir / "restart.sqlite"
    env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_DEVICE": "cpu"}
    attacker_env = {**os.environ, "TQDM_DISABLE": "1"}
    with service_process(env, port=port) as (_, service):
        attacker = subprocess.Popen(
            attacker_cmd(url, db, budget, retries=200),
            cwd=ROOT,
            env=attacker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        at_kill = _wait_rows(db, budget // 3, attacker, 300)
        service.kill()
        service.wait(10)
    down = time.monotonic()
    with service_process(env, port=port):
        restarted = time.monotonic() - down
        out, _ = attacker.communicate(timeout=600)
    figures = audit(db, budget)
    result.expect(attacker.returncode == 0, f"attacker exit {attacker.returncode}: {out[-300:]}")
    result.expect(0 < at_kill < budget, f"the kill did not land mid-run ({at_kill} rows)")
    result.expect(figures["rows"] == budget, f"{figures['rows']} rows for a budget of {budget}")
    result.expect(figures["lost"] == 0 and figures["duplicated"] == 0, f"rows {figures}")
    result.expect(figures["integrity"] == "ok", f"integrity_check: {figures['integrity']}")
    result.figures = {
        "budget": budget,
        "rows_at_kill": at_kill,
        "rows": figures["rows"],
        "rows_lost": figures["lost"],
        "rows_duplicated": figures["duplicated"],
        "down_s": round(restarted, 1),
    }
    return result


def check_graceful_shutdown(checkpoint: Path, in_flight: int = 64) -> CheckResult:
    """`in_flight` requests of 32 images; SIGTERM once the service has received all of them
    (/metrics says so; `in_flight_at_signal`: those not answered yet). Each must be answered
    200, a connection opened after the signal refused, and the service must exit cleanly."""
    result = CheckResult("sigterm")
    env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_DEVICE": "cpu"}
    _, png = sample_png()
    files = [("images", (f"{i}.png", png, "image/png")) for i in range(32)]

    async def burst(url: str, process: subprocess.Popen) -> tuple[list[int], float, int, bool]:
        limits = httpx.Limits(max_connections=in_flight + 1)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            tasks = [
                asyncio.create_task(client.post("/v1/predict", files=files))
                for _ in range(in_flight)
            ]
            held = await _wait_received(client, in_flight, deadline=time.monotonic() + 120)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            refused = await _new_connection_refused(url, started + 10)
            answers = await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(process.wait, 120)
            stopped = time.monotonic() - started
        codes = [a.status_code if isinstance(a, httpx.Response) else -1 for a in answers]
        return codes, stopped, held, refused

    with service_process(env) as (url, process):
        codes, stopped, held, refused = asyncio.run(burst(url, process))
        exit_code = process.returncode
    answered = codes.count(200)
    result.expect(held > 0, "no request was in flight when SIGTERM came (or some never arrived)")
    result.expect(answered == in_flight, f"{in_flight - answered} in-flight requests lost: {codes}")
    result.expect(refused, "a new connection was accepted after SIGTERM")
    # uvicorn re-raises the signal it handled once it has shut down: -SIGTERM is a clean exit
    result.expect(exit_code in (0, -signal.SIGTERM), f"the service exited with {exit_code}")
    result.figures = {"requests": in_flight, "in_flight_at_signal": held, "answered": answered,
                      "new_refused": refused, "shutdown_s": round(stopped, 2)}  # fmt: skip
    return result


def received_and_in_flight(metrics: str) -> tuple[int, int]:
    """(prediction requests the service has received, those not yet answered) from /metrics."""
    held = re.search(r"^victim_requests_in_flight (\S+)$", metrics, re.MULTILINE)
    done = re.findall(r"^victim_requests_total\{[^}]*\} (\S+)$", metrics, re.MULTILINE)
    in_flight = int(float(held.group(1))) if held else 0
    return in_flight + int(sum(float(d) for d in done)), in_flight


async def _wait_received(client: httpx.AsyncClient, wanted: int, deadline: float) -> int:
    """Poll /metrics until the service has received `wanted` requests; those still in flight."""
    received, held = 0, 0
    while time.monotonic() < deadline:
        received, held = received_and_in_flight((await client.get("/metrics")).text)
        if received >= wanted:
            break
        await asyncio.sleep(0.05)
    return held if received >= wanted else 0


async def _new_connection_refused(url: str, deadline: float) -> bool:
    """True once a fresh TCP connection to the service is refused (it stopped listening)."""
    host, port = url.removeprefix("http://").split(":")
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return True
        writer.close()
        await asyncio.sleep(0.05)
    return False


def check_attacker_kills(
    checkpoint: Path, workdir: Path, kills: int = 6, budget: int = 1200
) -> CheckResult:
    """SIGKILL the attacker at random moments while it writes, `kills` times, then let it end."""
    result = CheckResult("attacker-sigkill")
    db = workdir / "killed.sqlite"
    env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_DEVICE": "cpu"}
    attacker_env = {**os.environ, "TQDM_DISABLE": "1"}
    rng = random.Random(0)
    landed = 0
    with service_process(env) as (url, _):
        for _ in range(kills):
            attacker = subprocess.Popen(
                attacker_cmd(url, db, budget),
                cwd=ROOT,
                env=attacker_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            before = count_rows(db)
            _wait_rows(db, before + rng.randint(8, 120), attacker, 120)
            time.sleep(rng.uniform(0, 0.3))  # somewhere inside the next batched write
            attacker.kill()
            attacker.wait(10)
            landed += attacker.returncode == -signal.SIGKILL
            integrity = audit(db, budget)["integrity"]
            result.expect(integrity == "ok", f"integrity_check after a kill: {integrity}")
        final = subprocess.run(
            attacker_cmd(url, db, budget),
            cwd=ROOT,
            env=attacker_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    figures = audit(db, budget)
    result.expect(final.returncode == 0, f"the rerun failed: {final.stderr[-300:]}")
    result.expect(figures["rows"] == budget and figures["lost"] == 0, f"rows {figures}")
    result.expect(figures["duplicated"] == 0 and figures["runs"] == 1, f"rows {figures}")
    result.figures = {
        "kills": landed,
        "budget": budget,
        "rows": figures["rows"],
        "rows_lost": figures["lost"],
        "rows_duplicated": figures["duplicated"],
        "integrity": figures["integrity"],
    }
    return result


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def read_only(folder: Path, cmd: list[str]) -> list[str]:
    """`cmd` with `folder` read-only: a read-only bind mount in a private mount namespace when
    root (root ignores file modes), else the folder's and its files' write bits removed."""
    if os.geteuid() == 0:
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        return ["unshare", "--mount", "sh", "-c", script, str(folder), *cmd]
    for path in (*folder.iterdir(), folder):
        path.chmod(path.stat().st_mode & ~0o222)
    return cmd


def _attack(cmd: list[str], **options) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **options
    )


def check_storage_faults(checkpoint: Path, workdir: Path, budget: int = 3000) -> CheckResult:
    """Disk full and a read-only database: exit 2 with one line, complete rows only."""
    result = CheckResult("disk-full/ro")
    env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_DEVICE": "cpu"}
    outcomes = {}
    with service_process(env) as (url, _):
        full_db = workdir / "full.sqlite"
        full = _attack(attacker_cmd(url, full_db, budget), preexec_fn=_limit_file_size(256 << 10))
        outcomes["disk full"] = (full, full_db)
        ro_dir = Path(tempfile.mkdtemp(dir=workdir))
        ro_db = ro_dir / "ro.sqlite"
        first = _attack([*attacker_cmd(url, ro_db, budget), "--limit", "200"])
        result.expect(first.returncode == 0, f"the first part of the run failed: {first.stderr}")
        readonly = _attack(read_only(ro_dir, attacker_cmd(url, ro_db, budget)))
        for path in (ro_dir, *ro_dir.iterdir()):
            path.chmod(path.stat().st_mode | 0o200)
        outcomes["read-only"] = (readonly, ro_db)
        for name, (run, db) in outcomes.items():
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            result.expect(run.returncode == 2, f"{name}: exit {run.returncode}, not 2")
            result.expect(  # the progress bar may stand before it on stderr
                bool(lines) and lines[-1].startswith("error:") and "Traceback" not in run.stderr,
                f"{name}: not one clear line: {run.stderr.strip()[-300:]!r}",
            )
            figures = audit(db, budget)
            result.expect(figures["integrity"] == "ok", f"{name}: integrity {figures}")
            result.expect(figures["duplicated"] == 0, f"{name}: duplicated rows {figures}")
            again = _attack(attacker_cmd(url, db, budget))
            after = audit(db, budget)
            result.expect(
                again.returncode == 0 and after["rows"] == budget and after["lost"] == 0,
                f"{name}: the rerun with room did not complete: {again.stderr[-200:]}",
            )
            result.figures[f"{name.split()[0]}_rows_kept"] = figures["rows"]
            result.figures[f"{name.split()[0]}_message"] = lines[-1][:70] if lines else ""
    return result
