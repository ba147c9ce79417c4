"""The query loop end to end against the real service: exact budgets, resume after SIGKILL,
a server that dies and comes back, the adaptive strategy's replay, export and CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attacker.cli import app as cli
from attacker.client import RetryPolicy
from attacker.query import QueryConfig, run_query
from attacker.store import (
    iter_queries,
    load_pool,
    load_run,
    open_store,
    pixels_digest,
    sent_image,
)
from benchmarks.common import throwaway_victim
from shared.imaging import encode_image
from tests.servers import (
    ROOT,
    count_answers,
    free_port,
    running_service,
    service_process,
    sigkill_after,
)
from victim_service.settings import VictimSettings


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 32x32 cnn5: querying does not depend on the victim's accuracy."""
    return throwaway_victim(tmp_path_factory.mktemp("victim") / "v.pt", arch="cnn5")


@pytest.fixture(scope="module")
def service(victim: Path):
    # batching off: each request runs alone, so the same images always get the same answers
    settings = VictimSettings(checkpoint=victim, device="cpu", batch_max_wait_ms=0)
    with running_service(settings) as url:
        yield url


def _rows(db: Path, run_id: int | None = None) -> list:
    with open_store(db)() as session:
        run = load_run(session, run_id)
        return list(iter_queries(session, run.id))


def test_exact_budget_reloadable_images_and_a_complete_rerun(service, tmp_path):
    config = QueryConfig(
        url=service + "/", pool="natural", budget=203, db=tmp_path / "t.sqlite", pool_size=500,
        seed=3, concurrency=3, batch_size=8, progress=False,
    )  # fmt: skip
    result = run_query(config)
    assert (result.answered, result.new, result.complete) == (203, 203, True)
    rows = _rows(config.db)
    assert [r.position for r in rows] == list(range(203))
    assert len({r.pool_index for r in rows}) == 203
    with open_store(config.db)() as session:
        run = load_run(session)
    assert run.status == "complete" and run.finished_at is not None
    assert run.victim_url == service and run.output_mode == "probs" and run.num_outputs == 10
    assert run.params["send_size"] == 32
    pool = load_pool(run)  # the contract the knockoff trainer relies on
    for row in rows[::50]:
        sent = encode_image(sent_image(run, pool, row.pool_index))
        assert hashlib.sha256(sent).hexdigest() == row.sha256
        assert pixels_digest(sent_image(run, pool, row.pool_index)) == row.pixels_sha256
        assert row.reference == f"natural#{row.pool_index}"
        assert len(row.answer["probabilities"]) == 10 and row.latency_ms > 0
    again = run_query(config)
    assert again.already_complete and again.new == 0 and len(_rows(config.db)) == 203
    # a different seed is a different run in the same database
    other = run_query(QueryConfig(**{**vars(config), "seed": 4}))
    assert other.run_id != result.run_id and other.answered == 203


def test_adaptive_paused_and_resumed_asks_for_the_same_images(service, tmp_path):
    common = dict(
        url=service, pool="natural", budget=160, strategy="adaptive", pool_size=600, seed=1,
        concurrency=2, batch_size=8, progress=False,
    )  # fmt: skip
    whole = run_query(QueryConfig(db=tmp_path / "whole.sqlite", **common))
    first = run_query(QueryConfig(db=tmp_path / "parts.sqlite", limit=56, **common))
    assert not first.complete and first.answered == 56
    rest = run_query(QueryConfig(db=tmp_path / "parts.sqlite", **common))
    assert rest.resumed and rest.complete and rest.new == 104
    plan = {r.position: r.pool_index for r in _rows(tmp_path / "whole.sqlite")}
    resumed = {r.position: r.pool_index for r in _rows(tmp_path / "parts.sqlite")}
    assert whole.answered == 160 and len(set(plan.values())) == 160
    assert resumed == plan


def _write_pool(folder: Path, seed: int) -> None:
    """An ImageFolder pool of 40 PNGs in two classes; another seed, other pixels."""
    rng = np.random.default_rng(seed)
    for n in range(40):
        (folder / f"c{n % 2}").mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        (folder / f"c{n % 2}" / f"{n:03d}.png").write_bytes(encode_image(image))


def test_a_pool_changed_before_a_resume_is_refused_before_any_new_answer(service, tmp_path):
    """The pool's files regenerated between an interrupted run and its rerun: the rerun names
    the image that differs in one line and adds nothing to the run (the transfer set's loader
    would refuse it only later, at training)."""
    _write_pool(pool := tmp_path / "pool", seed=0)
    common = dict(url=service, pool=f"imagefolder:{pool}", budget=32, batch_size=8,
                  concurrency=2, progress=False, db=tmp_path / "t.sqlite")  # fmt: skip
    first = run_query(QueryConfig(limit=16, **common))
    assert not first.complete and first.answered == 16
    _write_pool(pool, seed=1)  # the same names, other pixels
    args = ["query", "--url", service, "--pool", f"imagefolder:{pool}", "--budget", "32",
            "--batch-size", "8", "--db", str(tmp_path / "t.sqlite")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert line.startswith("error: cannot resume run 1: pool image "), line
    assert "(its pixels differ): the pool changed since the run; restore the pool" in line
    assert count_answers(tmp_path / "t.sqlite") == 16
    _write_pool(pool, seed=0)  # restored: the same command goes on
    assert run_query(QueryConfig(**common)).complete


def _attacker_cmd(url: str, db: Path, budget: int) -> list[str]:
    return [sys.executable, "-m", "attacker.cli", "query", "--url", url, "--pool", "noise",
            "--pool-size", "2000", "--budget", str(budget), "--db", str(db), "--seed", "7",
            "--concurrency", "4", "--batch-size", "8"]  # fmt: skip


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_run(victim, tmp_path):
    budget, rate = 480, 160.0
    settings = VictimSettings(
        checkpoint=victim, device="cpu", rate_limit=rate, rate_burst=64, max_images=64
    )
    env = {**os.environ, "TQDM_DISABLE": "1"}
    db = tmp_path / "killed.sqlite"
    with running_service(settings) as url:
        process = subprocess.Popen(_attacker_cmd(url, db, budget), cwd=ROOT, env=env)
        at_kill = sigkill_after(process, db, 32, 90)
        assert process.returncode == -signal.SIGKILL
        assert 0 < at_kill < budget, "the kill must land mid-run"
        rerun = subprocess.run(
            _attacker_cmd(url, db, budget), cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        assert "resumed" in rerun.stdout and f"{budget}/{budget}" in rerun.stdout
        clean = run_query(
            QueryConfig(
                url=url, pool="noise", pool_size=2000, budget=budget, db=tmp_path / "clean.sqlite",
                seed=7, concurrency=4, batch_size=8, progress=False,
            )
        )  # fmt: skip
    rows = _rows(db)
    assert len(rows) == budget and [r.position for r in rows] == list(range(budget))
    assert len({r.pool_index for r in rows}) == budget
    assert len({r.sha256 for r in rows}) == budget
    uninterrupted = {r.position: (r.pool_index, r.sha256) for r in _rows(clean.db)}
    assert {r.position: (r.pool_index, r.sha256) for r in rows} == uninterrupted
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] == 1


def test_ctrl_c_mid_run_says_what_is_stored_and_the_same_command_resumes(service, tmp_path):
    """Ctrl+C (SIGINT) ended the run with exit 130 and no word; it now says how many answers
    are stored and that the same command resumes, and the rerun completes the budget."""
    budget, db = 2000, tmp_path / "interrupted.sqlite"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # Ctrl+C reaches a terminal's foreground job; a shell's background job (`make test &`)
    # starts with SIGINT ignored, and its children inherit that: start this one as in a terminal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(_attacker_cmd(service, db, budget), cwd=ROOT, env=env,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    stored = sigkill_after(process, db, 32, 90, sig=signal.SIGINT)
    stderr = process.stderr.read()
    assert process.returncode == 130 and 0 < stored < budget, stderr
    assert f"interrupted: {stored} answers stored in {db}; rerun the same command to resume" in (
        stderr
    )
    assert "Traceback" not in stderr
    rerun = subprocess.run(_attacker_cmd(service, db, budget), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert rerun.returncode == 0 and f"{budget}/{budget}" in rerun.stdout, rerun.stderr
    assert len(_rows(db)) == budget


def test_a_server_that_dies_and_comes_back_is_survived(victim, tmp_path):
    port = free_port()
    env = {"VICTIM_CHECKPOINT": str(victim), "VICTIM_DEVICE": "cpu", "VICTIM_RATE_LIMIT": "150",
           "VICTIM_RATE_BURST": "64"}  # fmt: skip
    config = QueryConfig(
        url=f"http://127.0.0.1:{port}", pool="noise", pool_size=1000, budget=400,
        db=tmp_path / "t.sqlite", concurrency=4, batch_size=8, commit_interval_s=0.1,
        retry=RetryPolicy(max_retries=30, base_delay_s=0.1, max_delay_s=1.0), progress=False,
    )  # fmt: skip
    outcome: dict = {}

    def attack() -> None:
        try:
            outcome["result"] = run_query(config)
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    with service_process(env, port=port) as (_, process):
        thread = threading.Thread(target=attack)
        thread.start()
        deadline = time.monotonic() + 60
        while count_answers(config.db) < 40 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        process.kill()
        process.wait(10)
        at_death = count_answers(config.db)
    assert 0 < at_death < 400, "the server must die mid-run"
    time.sleep(0.5)
    with service_process(env, port=port):
        thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.complete and result.answered == 400
    assert result.stats.transport_errors > 0 and result.stats.retries > 0
    rows = _rows(config.db)
    assert [r.position for r in rows] == list(range(400))
    assert len({r.pool_index for r in rows}) == 400


def test_export_writes_the_images_sent_and_their_answers(service, tmp_path):
    db = tmp_path / "t.sqlite"
    run_query(
        QueryConfig(url=service, pool="natural", pool_size=300, budget=40, db=db,
                    batch_size=16, progress=False)
    )  # fmt: skip
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "answers.json").read_text())
    assert document["run"]["budget"] == 40 and len(document["queries"]) == 40
    files = sorted(out.glob("images/*/*.png"))
    assert len(files) == 40
    for entry in document["queries"][:10]:
        data = (out / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert Path(entry["file"]).parent.name == f"{entry['label']}"
        assert "probabilities" in entry["answer"]


def test_cli_errors_are_one_clear_line(service, victim, tmp_path):
    runner = CliRunner()
    dead = f"http://127.0.0.1:{free_port()}"
    args = ["query", "--pool", "noise", "--budget", "8", "--db", str(tmp_path / "t.sqlite")]
    result = runner.invoke(cli, [*args, "--url", dead])
    assert result.exit_code == 2
    assert dead in result.output and "Traceback" not in result.output
    assert "failed 3 times" in result.output  # the first contact: 2 quick retries
    assert not (tmp_path / "t.sqlite").exists()  # no empty transfer set left behind
    result = runner.invoke(cli, [*args, "--url", dead, "--retries", "0"])
    assert result.exit_code == 2 and "failed once" in result.output
    result = runner.invoke(cli, [*args, "--url", service, "--budget", "0"])
    assert result.exit_code == 2 and "budget" in result.output
    result = runner.invoke(cli, [*args, "--url", service, "--strategy", "greedy"])
    assert result.exit_code == 2 and "strategy" in result.output
    result = runner.invoke(cli, [*args, "--url", service, "--timeout", "0"])
    assert (
        result.exit_code == 2 and "the timeout must be above 0 seconds (got 0.0)" in result.output
    )
    result = runner.invoke(cli, [*args, "--url", service, "--db", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{tmp_path} is a folder; a transfer set is one SQLite file" in result.output
    settings = VictimSettings(checkpoint=victim, device="cpu", api_keys=["secret"])
    with running_service(settings) as url:
        result = runner.invoke(cli, [*args, "--url", url, "--api-key", "nope"])
        assert result.exit_code == 2 and "API key" in result.output
        result = runner.invoke(cli, [*args, "--url", url, "--api-key", "secret"])
        assert result.exit_code == 0, result.output
        assert "8/8" in result.output
