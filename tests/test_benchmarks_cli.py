"""The benchmarks' own command lines: a wrong argument is one line and exit 2, as for the four
commands (`benchmarks.serve --repeats 0` was an IndexError, a missing victim a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.servers import ROOT


@pytest.mark.parametrize(("args", "line"), [
    (["benchmarks.prada", "--victim", "/no/such/victim.pt"],
     "error: checkpoint /no/such/victim.pt does not exist"),
    (["benchmarks.attack", "--pools", "nope"], "error: unknown dataset 'nope'"),
    (["benchmarks.attack", "--repeats", "0"], "--repeats must be at least 1"),
    (["benchmarks.attack", "--pools", "noise@kept"], "only natural@kept has a variant"),
])  # fmt: skip
def test_a_wrong_argument_is_one_line(args, line):
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert line in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_components_benchmark_runs_and_measures_every_step(tmp_path):
    """`benchmarks.components` at one repeat: each step's CPU is measured (no step silently
    dropped), on both sides."""
    out = tmp_path / "components.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.components", "--repeats", "1",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    service, attacker = (
        results["cpu_us_per_32_image_request"],
        results["attacker_cpu_us_per_32_image_request"],
    )
    decodes = {"png_decode", "png_decode_pillow_encoded", "png_decode_photographs",
               "png_decode_photographs_pillow_encoded"}  # fmt: skip
    assert {*decodes, "multipart_fast_path", "model_forward_and_pipeline"} <= set(service)
    assert set(attacker) == {"png_encode", "png_encode_pillow", "natural_pool_synthesis",
                             "natural_pool_read_kept", "noise_pool", "noise_pool_integers",
                             "answers_parse", "transfer_set_write",
                             "transfer_set_write_orm"}  # fmt: skip
    # (multipart_starlette is a difference of two timings, so it is left out here)
    measured = [*(service[k] for k in decodes), service["model_forward_and_pipeline"],
                *attacker.values()]  # fmt: skip
    assert all(value > 0 for value in measured), results


def test_each_natural_run_of_the_attack_benchmark_starts_with_no_image_made(tmp_path, monkeypatch):
    """`natural` must make every image it sends and `natural@kept` read every one back: the
    first draft kept one folder per (pool, protocol, repeat), and the split layout's `natural`
    runs read what the shared layout's had made (11 ms of attacker CPU per request, not 31)."""
    from attacker.query import QueryConfig
    from attacker.runs import load_pool_of
    from benchmarks.attack import fill_pool, own_pool_store
    from shared.datasets.generated import NATURAL_CACHE, NaturalPool

    config = QueryConfig(url="http://127.0.0.1:9", pool="natural", budget=20, db=tmp_path / "t.db",
                         pool_size=20, pool_image_size=16)  # fmt: skip
    with own_pool_store(tmp_path, "natural"):
        assert fill_pool(config) > 0
        NATURAL_CACHE.clear()
        made = []
        make = NaturalPool._make
        monkeypatch.setattr(NaturalPool, "_make", lambda self, i: made.append(i) or make(self, i))
        pool = load_pool_of(config)
        pool.arrays(16)
        assert made == []  # kept: read back
    NATURAL_CACHE.clear()
    with own_pool_store(tmp_path, "natural"):
        pool = load_pool_of(config)
        pool.arrays(16)
        assert made == list(range(20))  # a new run's folder: every image made
    NATURAL_CACHE.clear()
