"""The tests start the service the way the demo and benchmarks do; helpers to kill mid-run."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from victim_service.launch import ROOT, free_port, running_service, service_process, wait_ready

__all__ = ["ROOT", "count_answers", "free_port", "running_service", "service_process",
           "sigkill_after", "wait_ready"]  # fmt: skip


def count_answers(db: Path) -> int:
    """Committed answers in a transfer set, read-only (0 before the table exists)."""
    if not Path(db).exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("select count(*) from queries").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0


def sigkill_after(
    process: subprocess.Popen, db: Path, answers: int, timeout_s: float, sig: int = signal.SIGKILL
) -> int:
    """SIGKILL (or `sig`) `process` once `db` holds `answers` answers (or it exits, or time runs
    out); the number of answers once it has exited."""
    deadline = time.monotonic() + timeout_s
    while count_answers(db) < answers and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    process.wait(30)
    return count_answers(db)
