"""Attacks by name: validated parameters, Copycat's hard balanced labels, JBDA's augmentation
replayed on a hand-made knockoff, and a JBDA run through the real service, killed and resumed."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attacker.attacks import ATTACKS, Target, make_attack
from attacker.attacks.jbda import jacobian_augment, round_span, seed_set, step_size
from attacker.cli import app as cli
from attacker.export import export_run
from attacker.store import (
    Blob,
    PlannedImage,
    Query,
    Run,
    open_store,
    pixels_digest,
    read_blobs,
    store_blobs,
)
from attacker.transfer import load_transfer_set
from benchmarks.common import throwaway_victim
from shared.errors import TestbedError, UnknownNameError
from shared.imaging import decode_image
from tests.servers import ROOT, running_service, sigkill_after
from victim_service.settings import VictimSettings


def test_attacks_are_registered_by_name_with_parameters_validated_in_one_place():
    assert {"knockoff", "copycat", "jbda"} <= set(ATTACKS)
    assert make_attack("knockoff", {"budget": "200", "strategy": "adaptive"}).params.budget == 200
    with pytest.raises(UnknownNameError, match="unknown attack 'boogeyman'"):
        make_attack("boogeyman", {})
    with pytest.raises(TestbedError, match="attack knockoff: budget: Field required"):
        make_attack("knockoff", {})
    with pytest.raises(TestbedError, match="strategy: Input should be 'random'"):
        make_attack("copycat", {"budget": 10, "strategy": "adaptive"})
    with pytest.raises(TestbedError, match="lam: .*less than or equal to 1; colour: Extra"):
        make_attack("jbda", {"lam": 2, "colour": "red"})
    result = CliRunner().invoke(cli, ["attack", "jbda", "--url", "http://x", "--set", "lam"])
    assert result.exit_code == 2 and "--set takes key=value" in result.output
    listed = CliRunner().invoke(cli, ["attacks"])  # every attack with its parameters' defaults
    assert listed.exit_code == 0
    for name in ATTACKS:
        assert f"{name}: " in listed.output
    assert "budget = required" in listed.output and "round_epochs = 10" in listed.output
    # each description whole: its module docstring's first paragraph, not a cut first line
    assert "hard labels only (the argmax, even when the API discloses more)" in listed.output


def test_copycat_trains_on_balanced_hard_labels_whatever_the_api_disclosed(tmp_path):
    copycat = make_attack("copycat", {"budget": 10})
    assert copycat.hard_labels and copycat.knockoff_options().balance
    knockoff = make_attack("knockoff", {"budget": 10})
    assert not knockoff.hard_labels and not knockoff.knockoff_options().balance
    db = tmp_path / "t.sqlite"
    with open_store(db)() as session:
        run = Run(victim_url="x", pool="noise", pool_size=20, pool_image_size=32,
                  strategy="random", budget=12, seed=0, batch_size=8, output_mode="probs",
                  num_outputs=3, input_size=32, params={})  # fmt: skip
        session.add(run)
        session.flush()
        from attacker.store import load_pool, sent_image
        from shared.imaging import encode_image

        pool = load_pool(run)
        for i in range(12):
            digest = hashlib.sha256(encode_image(sent_image(run, pool, i))).hexdigest()
            answer = {"probabilities": [0.2, 0.5, 0.3] if i % 3 else [0.6, 0.3, 0.1]}
            session.add(Query(run_id=run.id, position=i, pool_index=i, reference="-",
                              sha256=digest, answer=answer, label=0, latency_ms=0))  # fmt: skip
        session.commit()
    transfer = copycat.transfer_set(Target(url="x", db=db), 1)
    assert transfer.mode == "label"
    assert transfer.targets[0, 0].tolist() == [1, 0, 0] and transfer.targets[1, 0].tolist() == [
        0, 1, 0,
    ]  # fmt: skip
    assert knockoff.transfer_set(Target(url="x", db=db), 1).mode == "probs"


def test_jacobian_augmentation_replays_papernot_on_a_hand_made_knockoff():
    """A linear knockoff on 1x1-pixel images: logits = (w . x, 0). dF_0/dx = p0 p1 w, so
    sign(dF_0/dx) = sign(w) and sign(dF_1/dx) = -sign(w); a zero weight gives no step."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 0.0]]))
    x = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1).repeat(3, 1, 1, 1)
    x[2] = torch.tensor([0.95, 0.02, 0.5]).view(3, 1, 1)
    out = jacobian_augment(model, x, torch.tensor([0, 1, 0]), 0.1).view(3, 3)
    assert out[0].tolist() == pytest.approx([0.6, 0.4, 0.5])  # y = 0: +sign(w)
    assert out[1].tolist() == pytest.approx([0.4, 0.6, 0.5])  # y = 1: -sign(w)
    assert out[2].tolist() == pytest.approx([1.0, 0.0, 0.5])  # clipped to the pixel range
    assert [step_size(0.1, rho, 2) for rho in range(5)] == pytest.approx(
        [0.1, 0.1, -0.1, -0.1, 0.1]
    )
    assert step_size(0.1, 7, None) == 0.1
    assert [list(round_span(20, r)) for r in range(3)] == [
        list(range(20)), list(range(20, 40)), list(range(40, 80)),
    ]  # fmt: skip


def test_each_rounds_substitute_learns_every_label_as_in_the_paper():
    """Papernot et al. train the substitute on all of S_rho: no held-out tenth, no epoch chosen
    on one, no translations (`train_knockoff` with val_fraction 0 trains on every answer,
    tests/test_knockoff.py); the final knockoff keeps the attack's usual recipe."""
    attack = make_attack("jbda", {"round_epochs": 4, "epochs": 9})
    options = attack.substitute_options()
    assert (options.val_fraction, options.keep, options.pad, options.epochs) == (0.0, "last", 0, 4)
    final = attack.knockoff_options()
    assert (final.val_fraction, final.pad, final.epochs) == (0.1, 2, 9)


def test_the_seed_set_is_balanced_and_seeded():
    params = make_attack("jbda", {"seed_per_class": 3}).params
    seeds = seed_set(params, 32)
    assert seeds.shape == (30, 32, 32, 3) and seeds.dtype == np.uint8
    assert np.array_equal(seeds, seed_set(params, 32))


@pytest.mark.timeout(900)  # two subprocesses, three rounds, four trainings: slow on a busy CPU
def test_jbda_through_the_service_killed_and_resumed(tmp_path):
    victim = throwaway_victim(tmp_path / "v.pt", arch="cnn5")
    settings = VictimSettings(checkpoint=victim, device="cpu", rate_limit=30, rate_burst=8,
                              max_images=8, batch_max_wait_ms=0)  # fmt: skip
    db = tmp_path / "jbda.sqlite"
    cmd = [sys.executable, "-m", "attacker.cli", "attack", "jbda", "--db", str(db),
           "--out", str(tmp_path / "k.pt"), "--concurrency", "2", "--batch-size", "4",
           "--set", "seed_per_class=2", "--set", "rounds=2", "--set", "round_epochs=1",
           "--set", "epochs=1", "--set", "device=cpu"]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with running_service(settings) as url:
        process = subprocess.Popen([*cmd, "--url", url], cwd=ROOT, env=env)
        at_kill = sigkill_after(process, db, 24, 400)
        assert 20 <= at_kill < 80, "the kill must land after the seed round, before the end"
        rerun = subprocess.run([*cmd, "--url", url], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=400)  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        assert "resumed" in rerun.stdout and "80/80" in rerun.stdout
        assert "knockoff: validation agreement" in rerun.stdout
    with open_store(db)() as session:
        runs = session.query(Run).all()
        assert len(runs) == 1 and runs[0].strategy == "jbda" and runs[0].status == "complete"
        rows = session.query(Query).order_by(Query.position).all()
        plan = {p.position: p.sha256 for p in session.query(PlannedImage)}
        blobs = {b.sha256: b.data for b in session.query(Blob)}
    assert [r.position for r in rows] == list(range(80))
    assert all(plan[r.position] == r.sha256 for r in rows)  # what was sent is what was planned
    assert all(hashlib.sha256(blobs[r.sha256]).hexdigest() == r.sha256 for r in rows)
    assert all(pixels_digest(decode_image(blobs[r.sha256])) == r.pixels_sha256 for r in rows)
    assert len(blobs) == len({r.sha256 for r in rows})  # deduplicated
    # round 1 steps each seed image by lambda = 0.1 (26 of 255) at most, pixel by pixel
    for child, parent in ((20, 0), (27, 7), (39, 19)):
        a = decode_image(blobs[rows[child].sha256]).astype(int)
        b = decode_image(blobs[rows[parent].sha256]).astype(int)
        assert np.abs(a - b).max() <= 26
    transfer = load_transfer_set(db)  # the knockoff reads the blobs back
    assert len(transfer.images) == 80 and transfer.mode == "probs"
    exported = export_run(db, tmp_path / "export")
    assert exported.images == 80
    files = sorted((tmp_path / "export" / "images").rglob("*.png"))
    assert {hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == set(plan.values())


def test_a_stored_image_is_checked_against_its_sha256_when_read_back(tmp_path):
    """Training and export read blobs through `read_blobs`: a changed byte or a missing blob is
    a one-line error, never a wrong image."""
    sessions = open_store(tmp_path / "t.sqlite")
    with sessions() as session, session.begin():
        good, bad = store_blobs(session, [b"first image", b"second image"])
    with sessions() as session:
        assert read_blobs(session, [good, bad])[good] == b"first image"
    with sessions() as session, session.begin():
        session.get(Blob, bad).data = b"second imagE"
    with sessions() as session:
        with pytest.raises(TestbedError, match=f"stored image {bad} is corrupt"):
            read_blobs(session, [good, bad])
        with pytest.raises(TestbedError, match="no stored image with sha256 0{64}"):
            read_blobs(session, ["0" * 64])


def test_an_old_database_gains_the_blob_tables_and_an_incompatible_one_is_refused(tmp_path):
    db = tmp_path / "old.sqlite"
    open_store(db)
    with sqlite3.connect(db) as conn:
        conn.execute("drop table planned_images")
        conn.execute("drop table blobs")
        conn.execute("alter table queries drop column pixels_sha256")
    open_store(db)  # a database from before blobs and pixel digests: upgraded in place
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        columns = {r[1] for r in conn.execute("pragma table_info(queries)")}
    assert {"blobs", "planned_images", "runs", "queries"} <= tables
    assert "pixels_sha256" in columns
    with sqlite3.connect(db) as conn:
        conn.execute("alter table queries drop column sha256")
    with pytest.raises(TestbedError, match="incompatible version: table queries lacks sha256"):
        open_store(db)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(TestbedError, match="not a transfer-set database"):
        open_store(junk)
